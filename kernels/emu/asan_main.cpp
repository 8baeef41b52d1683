// asan_main.cpp — a command-line launcher for the AddressSanitizer build of the emulator.
//
// tests/emulator.rs compiles the emulator runtime and every kernel again with
// -fsanitize=address, together with this file, into one program, and runs kernels through it
// (every production kernel family, with the geometry and buffer sizes of its Rust launcher).
// Every buffer is its own malloc of exactly the requested size, so ASan's redzones sit right
// after the last element: a kernel that writes or reads one element too far is reported
// ("heap-buffer-overflow") and the program exits non-zero. A buffer of 0 elements is a zero-byte
// malloc, so any access to it is reported. Dynamic shared memory is an exact-size malloc too
// (emu.cpp), and static __shared__ arrays keep ASan's global redzones.
//
// usage: emu_asan LAUNCH [-- LAUNCH]...
//   LAUNCH: KERNEL GX,GY,GZ BX,BY,BZ SHARED_BYTES [--reverse] ARG...
//   Launches run in order, each with buffers of its own (freed after it), so one process can
//   run a family's launches; a lone `--` separates them.
//   ARG (one per kernel parameter, in order):
//     f32buf:N          N floats, pseudo-random in [-3, 3)
//     f16buf:N          N __half, the same pseudo-random values rounded to f16 (emu_half.h)
//     bf16buf:N         N __nv_bfloat16, likewise rounded to bf16
//     i32buf:N:MOD      N ints MOD−1, MOD−2, …, 0, MOD−1, … (every value < MOD, the largest
//                       first): in-range targets or ids of a table of MOD rows
//     i32list:V,V,...   exactly the listed ints (CSR offsets, positions); `i32list:` is empty
//     i32:V  u32:V  f32:V  i64:V  f64:V   scalar parameters
//     f64buf:N          N doubles, pseudo-random in [-3, 3)
//     null              a null pointer (an optional buffer the kernel does without)
//     adamwtable:CHUNK:N1,N2,...   an AdamW launch table (kernels/adamw.cu) of one 64-byte entry
//                       per tensor of Ni elements, whose value, gradient, exp_avg and exp_avg_sq
//                       are exact-size f32 buffers of their own (exp_avg_sq non-negative), cut in
//                       chunks of CHUNK elements, every other entry decayed
//     adamwtable16:CHUNK:MOM:N1,N2,...   the same with 16-bit storage: exp_avg and exp_avg_sq
//                       exact-size 16-bit buffers (MOM = f16s: f16, and `reserved` an exact-size
//                       buffer of the entry's 2·ceil(Ni/256) f32 block scales, powers of two;
//                       MOM = bf16: bf16, no scales), values f32, f16, bf16 in turn by entry
//                       (flags ADAMW_P_F16 / ADAMW_P_BF16), gradients f32
//     adamwchunks       the chunk → entry index of the last adamwtable (one int per chunk)
//     u64zeros:N        N zeroed 64-bit words (counters the kernel adds to)
// prints "ok" after the last launch (exit 0), or "error: <message>" for the first launch the
// emulator refuses or fails (exit 2); ASan findings abort with its report, which names the kernel.
#include "emu.h"  // __half / __nv_bfloat16 (emu_half.h)

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
struct clipcu_emu_arg {
    uint32_t kind, size;
    const void* value;
};
int clipcu_emu_launch(const char* name, const uint32_t grid[3], const uint32_t block[3], size_t shared_bytes,
                      const clipcu_emu_arg* args, size_t nargs, uint32_t flags, char* err, size_t err_cap);
}

static bool dims(const char* s, uint32_t d[3]) { return std::sscanf(s, "%u,%u,%u", &d[0], &d[1], &d[2]) == 3; }

// A decimal integer at `s` (advanced past it), or false when there is none.
static bool number(const char*& s, long long& v) {
    char* e = nullptr;
    v = std::strtoll(s, &e, 10);
    if (e == s) return false;
    s = e;
    return true;
}

static const char* const USAGE = "usage: %s KERNEL GX,GY,GZ BX,BY,BZ SHARED_BYTES [--reverse] ARG... [-- LAUNCH]...\n";

// One launch: argv[0] is the kernel, argc the length of its segment. Returns main's exit code.
static int run_launch(int argc, char** argv, uint64_t& state) {
    if (argc < 4) {
        std::fprintf(stderr, "a launch needs KERNEL GRID BLOCK SHARED_BYTES\n");
        return 64;
    }
    uint32_t grid[3], block[3];
    if (!dims(argv[1], grid) || !dims(argv[2], block)) {
        std::fprintf(stderr, "bad grid or block\n");
        return 64;
    }
    size_t shared = std::strtoull(argv[3], nullptr, 10);
    uint32_t flags = 0;
    int first = 4;
    if (argc > 4 && std::strcmp(argv[4], "--reverse") == 0) {
        flags = 1;
        first = 5;
    }
    // Values live in these vectors (reserved, so addresses stay put); buffers are raw mallocs.
    std::vector<int32_t> ints;
    std::vector<uint32_t> uints;
    std::vector<int64_t> longs;
    std::vector<float> floats;
    std::vector<double> doubles;
    std::vector<void*> ptrs;
    std::vector<void*> owned;  // buffers that the table arguments point into
    std::vector<int32_t> chunk_entry;
    ints.reserve(argc);
    uints.reserve(argc);
    longs.reserve(argc);
    floats.reserve(argc);
    doubles.reserve(argc);
    ptrs.reserve(argc);
    std::vector<clipcu_emu_arg> args;
    auto next_float = [&state]() {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return (float)((state >> 40) * (1.0 / (1 << 24))) * 6.0f - 3.0f;
    };
    // An exact-size buffer of n elements of T, filled by fill(k); its pointer becomes the argument.
    auto buffer = [&](size_t n, auto fill) {
        using T = decltype(fill(size_t{0}));
        T* p = static_cast<T*>(std::malloc(n * sizeof(T)));
        for (size_t k = 0; k < n; ++k) p[k] = fill(k);
        ptrs.push_back(p);
        args.push_back({0, 8, &ptrs.back()});
    };
    auto bad = [](const std::string& a) {
        std::fprintf(stderr, "bad argument %s\n", a.c_str());
        return 64;
    };
    for (int i = first; i < argc; ++i) {
        std::string a = argv[i];
        auto count = [&](size_t prefix, long long& n) {
            const char* s = a.c_str() + prefix;
            return number(s, n) && n >= 0 && *s == 0;
        };
        long long n = 0;
        if (a.rfind("f32buf:", 0) == 0) {
            if (!count(7, n)) return bad(a);
            buffer((size_t)n, [&](size_t) { return next_float(); });
        } else if (a.rfind("f16buf:", 0) == 0) {
            if (!count(7, n)) return bad(a);
            buffer((size_t)n, [&](size_t) { return __float2half_rn(next_float()); });
        } else if (a.rfind("bf16buf:", 0) == 0) {
            if (!count(8, n)) return bad(a);
            buffer((size_t)n, [&](size_t) { return __float2bfloat16_rn(next_float()); });
        } else if (a.rfind("i32buf:", 0) == 0) {
            const char* s = a.c_str() + 7;
            long long mod = 0;
            if (!number(s, n) || n < 0 || *s++ != ':' || !number(s, mod) || mod < 1 || mod > INT32_MAX || *s)
                return bad(a);
            buffer((size_t)n, [mod](size_t k) { return (int32_t)(mod - 1 - (long long)(k % (size_t)mod)); });
        } else if (a.rfind("i32list:", 0) == 0) {
            std::vector<int32_t> vals;
            const char* s = a.c_str() + 8;
            while (*s) {
                long long v = 0;
                if (!number(s, v) || v < INT32_MIN || v > INT32_MAX || (*s && *s++ != ',')) return bad(a);
                vals.push_back((int32_t)v);
            }
            buffer(vals.size(), [&vals](size_t k) { return vals[k]; });
        } else if (a.rfind("i32:", 0) == 0) {
            ints.push_back((int32_t)std::strtol(a.c_str() + 4, nullptr, 10));
            args.push_back({1, 4, &ints.back()});
        } else if (a.rfind("i64:", 0) == 0) {
            longs.push_back((int64_t)std::strtoll(a.c_str() + 4, nullptr, 10));
            args.push_back({1, 8, &longs.back()});
        } else if (a.rfind("u32:", 0) == 0) {
            uints.push_back((uint32_t)std::strtoul(a.c_str() + 4, nullptr, 10));
            args.push_back({2, 4, &uints.back()});
        } else if (a.rfind("f32:", 0) == 0) {
            floats.push_back(std::strtof(a.c_str() + 4, nullptr));
            args.push_back({3, 4, &floats.back()});
        } else if (a.rfind("f64:", 0) == 0) {
            doubles.push_back(std::strtod(a.c_str() + 4, nullptr));
            args.push_back({3, 8, &doubles.back()});
        } else if (a.rfind("f64buf:", 0) == 0) {
            if (!count(7, n)) return bad(a);
            buffer((size_t)n, [&](size_t) { return (double)next_float(); });
        } else if (a == "null") {
            ptrs.push_back(nullptr);
            args.push_back({0, 8, &ptrs.back()});
        } else if (a.rfind("adamwtable:", 0) == 0) {
            const char* s = a.c_str() + 11;
            long long chunk = 0;
            if (!number(s, chunk) || chunk < 1 || *s++ != ':') return bad(a);
            std::vector<long long> sizes;
            while (*s) {
                long long v = 0;
                if (!number(s, v) || v < 0 || (*s && *s++ != ',')) return bad(a);
                sizes.push_back(v);
            }
            // 8 words per entry, as src/optim/adamw/gpu.rs packs them
            uint64_t* table = static_cast<uint64_t*>(std::malloc(sizes.size() * 64));
            chunk_entry.clear();
            for (size_t e = 0; e < sizes.size(); ++e) {
                uint64_t w[8] = {0};
                for (int k = 0; k < 4; ++k) {
                    float* b = static_cast<float*>(std::malloc((size_t)sizes[e] * sizeof(float)));
                    for (long long i = 0; i < sizes[e]; ++i) b[i] = k == 3 ? std::fabs(next_float()) : next_float();
                    owned.push_back(b);
                    w[k] = (uint64_t)(uintptr_t)b;
                }
                w[4] = (uint64_t)sizes[e];
                w[5] = (uint64_t)chunk_entry.size();
                w[6] = (uint64_t)(e % 2) | ((uint64_t)e << 32);
                for (long long c = 0; c < (sizes[e] + chunk - 1) / chunk; ++c) chunk_entry.push_back((int32_t)e);
                std::memcpy(table + 8 * e, w, sizeof w);
            }
            ptrs.push_back(table);
            args.push_back({0, 8, &ptrs.back()});
        } else if (a.rfind("adamwtable16:", 0) == 0) {
            const char* s = a.c_str() + 13;
            long long chunk = 0;
            if (!number(s, chunk) || chunk < 1 || *s++ != ':') return bad(a);
            bool f16s;
            if (std::strncmp(s, "f16s:", 5) == 0) {
                f16s = true;
                s += 5;
            } else if (std::strncmp(s, "bf16:", 5) == 0) {
                f16s = false;
                s += 5;
            } else {
                return bad(a);
            }
            std::vector<long long> sizes;
            while (*s) {
                long long v = 0;
                if (!number(s, v) || v < 0 || (*s && *s++ != ',')) return bad(a);
                sizes.push_back(v);
            }
            uint64_t* table = static_cast<uint64_t*>(std::malloc(sizes.size() * 64));
            chunk_entry.clear();
            for (size_t e = 0; e < sizes.size(); ++e) {
                const size_t n = (size_t)sizes[e];
                uint64_t w[8] = {0};
                const int pkind = (int)(e % 3);  // 0 f32, 1 f16, 2 bf16 values
                void* p;
                if (pkind == 0) {
                    float* b = static_cast<float*>(std::malloc(n * sizeof(float)));
                    for (size_t i = 0; i < n; ++i) b[i] = next_float();
                    p = b;
                } else {
                    uint16_t* b = static_cast<uint16_t*>(std::malloc(n * 2));
                    for (size_t i = 0; i < n; ++i)
                        b[i] = pkind == 1 ? __half_as_ushort(__float2half_rn(next_float()))
                                          : __bfloat16_as_ushort(__float2bfloat16_rn(next_float()));
                    p = b;
                }
                owned.push_back(p);
                w[0] = (uint64_t)(uintptr_t)p;
                float* g = static_cast<float*>(std::malloc(n * sizeof(float)));
                for (size_t i = 0; i < n; ++i) g[i] = next_float();
                owned.push_back(g);
                w[1] = (uint64_t)(uintptr_t)g;
                for (int k = 2; k < 4; ++k) {
                    uint16_t* b = static_cast<uint16_t*>(std::malloc(n * 2));
                    for (size_t i = 0; i < n; ++i) {
                        const float x = k == 3 ? std::fabs(next_float()) : next_float();
                        b[i] = f16s ? __half_as_ushort(__float2half_rn(x)) : __bfloat16_as_ushort(__float2bfloat16_rn(x));
                    }
                    owned.push_back(b);
                    w[k] = (uint64_t)(uintptr_t)b;
                }
                w[4] = (uint64_t)n;
                w[5] = (uint64_t)chunk_entry.size();
                w[6] = (uint64_t)(e % 2) | (uint64_t)(pkind == 1 ? 2 : pkind == 2 ? 4 : 0) | ((uint64_t)e << 32);
                if (f16s) {
                    const size_t nb = 2 * ((n + 255) / 256);
                    float* sc = static_cast<float*>(std::malloc(nb * sizeof(float)));
                    for (size_t i = 0; i < nb; ++i) sc[i] = (float)(1u << (i % 4)) / 4.0f;
                    owned.push_back(sc);
                    w[7] = (uint64_t)(uintptr_t)sc;
                }
                for (long long c = 0; c < (sizes[e] + chunk - 1) / chunk; ++c) chunk_entry.push_back((int32_t)e);
                std::memcpy(table + 8 * e, w, sizeof w);
            }
            ptrs.push_back(table);
            args.push_back({0, 8, &ptrs.back()});
        } else if (a.rfind("u64zeros:", 0) == 0) {
            if (!count(9, n)) return bad(a);
            buffer((size_t)n, [](size_t) { return (uint64_t)0; });
        } else if (a == "adamwchunks") {
            buffer(chunk_entry.size(), [&](size_t k) { return chunk_entry[k]; });
        } else {
            return bad(a);
        }
    }
    char err[4096] = {0};
    int rc = clipcu_emu_launch(argv[0], grid, block, shared, args.data(), args.size(), flags, err, sizeof err);
    for (void* p : ptrs) std::free(p);
    for (void* p : owned) std::free(p);
    if (rc != 0) {
        std::printf("error: %s\n", err);
        return 2;
    }
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr, USAGE, argv[0]);
        return 64;
    }
    uint64_t state = 0x9e3779b97f4a7c15ull;  // one pseudo-random stream over all launches
    for (int start = 1; start < argc;) {
        int end = start;
        while (end < argc && std::strcmp(argv[end], "--") != 0) ++end;
        int rc = run_launch(end - start, argv + start, state);
        if (rc != 0) return rc;
        start = end + 1;
    }
    std::printf("ok\n");
    return 0;
}
