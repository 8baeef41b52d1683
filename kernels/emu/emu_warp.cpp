// emu_warp.cpp — the arithmetic of the emulator's warp collectives: given the 32 exchange slots
// of a warp, in which every participating lane has deposited its operands, compute every lane's
// result (shuffles, votes, integer reductions, ldmatrix, mma.m16n8k16). Pure functions: the
// scheduling around them (who waits, who releases) is in emu.cpp.
//
// Semantics follow the PTX ISA: shfl.sync's source-lane rule with its clamp and segment mask,
// vote.sync, redux.sync, ldmatrix's row-address and fragment layout, and the mma.m16n8k16
// fragment layouts (sources are cited where each is implemented).
#include "emu_warp.h"

#include <algorithm>
#include <cstdarg>

namespace clipcu_emu {
namespace {
std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}
uint16_t lo16(uint32_t r) { return (uint16_t)(r & 0xffffu); }
uint16_t hi16(uint32_t r) { return (uint16_t)(r >> 16); }

}  // namespace

const char* warp_op_name(WarpOp op) {
    switch (op) {
        case OP_SYNCWARP: return "__syncwarp";
        case OP_SHFL_IDX: return "__shfl_sync";
        case OP_SHFL_UP: return "__shfl_up_sync";
        case OP_SHFL_DOWN: return "__shfl_down_sync";
        case OP_SHFL_XOR: return "__shfl_xor_sync";
        case OP_BALLOT: return "__ballot_sync";
        case OP_ANY: return "__any_sync";
        case OP_ALL: return "__all_sync";
        case OP_REDUCE_ADD: return "__reduce_add_sync";
        case OP_REDUCE_MIN_S: case OP_REDUCE_MIN_U: return "__reduce_min_sync";
        case OP_REDUCE_MAX_S: case OP_REDUCE_MAX_U: return "__reduce_max_sync";
        case OP_REDUCE_AND: return "__reduce_and_sync";
        case OP_REDUCE_OR: return "__reduce_or_sync";
        case OP_REDUCE_XOR: return "__reduce_xor_sync";
        case OP_LDMATRIX: return "ldmatrix";
        case OP_MMA_F16: return "mma.m16n8k16.f16";
        case OP_MMA_BF16: return "mma.m16n8k16.bf16";
        case OP_ACTIVEMASK: return "__activemask";
    }
    return "?";
}

std::string warp_exchange(WarpOp op, uint32_t mask, Slot* s) {
    switch (op) {
        case OP_SYNCWARP:
        case OP_ACTIVEMASK:
            break;
        case OP_SHFL_IDX:
        case OP_SHFL_UP:
        case OP_SHFL_DOWN:
        case OP_SHFL_XOR:
            // PTX ISA shfl.sync: c holds the clamp (bits 0..4) and the segment mask (8..12).
            for (int lane = 0; lane < 32; ++lane) {
                if (!(mask >> lane & 1)) continue;
                int b = s[lane].b & 0x1f, c = s[lane].c;
                int segmask = (c >> 8) & 0x1f, cval = c & 0x1f;
                int max_lane = (lane & segmask) | (cval & ~segmask);
                int min_lane = lane & segmask;
                int j;
                bool ok;
                if (op == OP_SHFL_UP) { j = lane - b; ok = j >= max_lane; }
                else if (op == OP_SHFL_DOWN) { j = lane + b; ok = j <= max_lane; }
                else if (op == OP_SHFL_XOR) { j = lane ^ b; ok = j <= max_lane; }
                else { j = min_lane | (b & ~segmask); ok = j <= max_lane; }
                if (!ok) j = lane;
                // Reading a lane outside the mask is undefined on the GPU: all-ones bits (NaN for
                // floats) make such a read visible instead of plausible.
                s[lane].out = (mask >> j & 1) ? s[j].value : ~0ull;
            }
            break;
        case OP_BALLOT:
        case OP_ANY:
        case OP_ALL: {
            uint32_t ballot = 0;
            for (uint32_t lane = 0; lane < 32; ++lane)
                if ((mask >> lane & 1) && s[lane].value) ballot |= 1u << lane;
            uint64_t r = op == OP_BALLOT ? ballot : op == OP_ANY ? (ballot != 0) : (ballot == mask);
            for (uint32_t lane = 0; lane < 32; ++lane)
                if (mask >> lane & 1) s[lane].out = r;
            break;
        }
        default: {  // integer reductions over the lanes of the mask
            bool first = true;
            uint32_t acc = 0;
            for (uint32_t lane = 0; lane < 32; ++lane) {
                if (!(mask >> lane & 1)) continue;
                uint32_t v = (uint32_t)s[lane].value;
                if (first) { acc = v; first = false; continue; }
                switch (op) {
                    case OP_REDUCE_ADD: acc += v; break;
                    case OP_REDUCE_MIN_S: acc = (int32_t)v < (int32_t)acc ? v : acc; break;
                    case OP_REDUCE_MAX_S: acc = (int32_t)v > (int32_t)acc ? v : acc; break;
                    case OP_REDUCE_MIN_U: acc = std::min(acc, v); break;
                    case OP_REDUCE_MAX_U: acc = std::max(acc, v); break;
                    case OP_REDUCE_AND: acc &= v; break;
                    case OP_REDUCE_OR: acc |= v; break;
                    case OP_REDUCE_XOR: acc ^= v; break;
                    default: break;
                }
            }
            for (uint32_t lane = 0; lane < 32; ++lane)
                if (mask >> lane & 1) s[lane].out = acc;
            break;
        }
        case OP_LDMATRIX: {
            // Matrix m (of num) has its 8 row addresses in lanes 8m..8m+7; a row is 8 b16 values.
            // Lane t receives, per matrix, the pair (row t/4, cols 2(t%4), 2(t%4)+1) — or with
            // .trans the pair (rows 2(t%4), 2(t%4)+1, col t/4) — low half first.
            int num = s[0].b;
            bool trans = s[0].c != 0;
            for (uint32_t lane = 1; lane < 32; ++lane)
                if (s[lane].b != num || (s[lane].c != 0) != trans)
                    return fmt("ldmatrix: lanes disagree on the shape (lane 0 .x%d%s, lane %u .x%d%s)",
                             num, trans ? ".trans" : "", lane, s[lane].b, s[lane].c ? ".trans" : "");
            uint16_t m[4][8][8];
            for (int mi = 0; mi < num; ++mi)
                for (int row = 0; row < 8; ++row) {
                    const void* p = s[mi * 8 + row].ptr;
                    if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
                        return fmt("ldmatrix: row address %p of lane %d is not 16-byte aligned", p, mi * 8 + row);
                    std::memcpy(m[mi][row], p, 16);
                }
            for (uint32_t t = 0; t < 32; ++t)
                for (int mi = 0; mi < num; ++mi) {
                    uint32_t r = t / 4, c = 2 * (t % 4);
                    uint16_t lo = trans ? m[mi][c][r] : m[mi][r][c];
                    uint16_t hi = trans ? m[mi][c + 1][r] : m[mi][r][c + 1];
                    s[t].r[mi] = (uint32_t)lo | ((uint32_t)hi << 16);
                }
            break;
        }
        case OP_MMA_F16:
        case OP_MMA_BF16: {
            // PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type", with
            // g = lane/4, t = lane%4: A (16x16, row) reg i holds rows g (+8 for i = 1, 3) and
            // columns 2t, 2t+1 (+8 for i ≥ 2); B (16x8, col) reg i holds rows 2t, 2t+1 (+8 for
            // i = 1), column g; C/D element i: row g (+8 for i ≥ 2), column 2t + (i & 1).
            bool bf = op == OP_MMA_BF16;
            auto cvt = [bf](uint16_t h) { return bf ? bf16_bits_to_f32(h) : f16_bits_to_f32(h); };
            float A[16][16], B[16][8], C[16][8];
            for (uint32_t lane = 0; lane < 32; ++lane) {
                uint32_t gr = lane / 4, t = lane % 4;
                for (int i = 0; i < 4; ++i) {
                    uint32_t row = gr + ((i & 1) ? 8 : 0), col = 2 * t + ((i & 2) ? 8 : 0);
                    A[row][col] = cvt(lo16(s[lane].a[i]));
                    A[row][col + 1] = cvt(hi16(s[lane].a[i]));
                }
                for (int i = 0; i < 2; ++i) {
                    uint32_t row = 2 * t + (i ? 8 : 0);
                    B[row][gr] = cvt(lo16(s[lane].bfrag[i]));
                    B[row + 1][gr] = cvt(hi16(s[lane].bfrag[i]));
                }
                for (int i = 0; i < 4; ++i) C[gr + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = s[lane].cfrag[i];
            }
            for (uint32_t lane = 0; lane < 32; ++lane) {
                uint32_t gr = lane / 4, t = lane % 4;
                for (int i = 0; i < 4; ++i) {
                    uint32_t row = gr + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
                    // Products of two 16-bit floats are exact in f32; the sum runs k = 0..15 in
                    // order from C (the tensor core's own order is unspecified: GPU results may
                    // differ in the last bits).
                    float acc = C[row][col];
                    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
                    s[lane].d[i] = acc;
                }
            }
            break;
        }
    }
    return "";
}
}  // namespace clipcu_emu
