// emu_warp.h — internal to the emulator runtime (emu.cpp, emu_warp.cpp): the per-lane exchange
// slot of a warp collective and the function that computes a collective's results.
#pragma once
#include <string>

#include "emu.h"

namespace clipcu_emu {
// One lane's side of a warp collective: inputs written by the lane, outputs by the last lane.
struct Slot {
    uint64_t value;
    int b, c;
    const void* ptr;
    uint32_t a[4], bfrag[2];
    float cfrag[4];
    uint64_t out;
    uint32_t r[4];
    float d[4];
};

const char* warp_op_name(WarpOp op);

// All lanes of `mask` have deposited their operands in `lanes[0..32)` (one warp's slots): write
// each participating lane's result. Returns "" or why the collective is invalid (lanes that
// disagree on an ldmatrix shape, a misaligned row address).
std::string warp_exchange(WarpOp op, uint32_t mask, Slot* lanes);
}  // namespace clipcu_emu
