// asan_main.cpp — a command-line launcher for the AddressSanitizer build of the emulator.
//
// tests/emulator.rs compiles the emulator runtime and every kernel again with
// -fsanitize=address, together with this file, into one program, and runs kernels through it.
// Every buffer is its own malloc of exactly the requested size, so ASan's redzones sit right
// after the last element: a kernel that writes or reads one element too far is reported
// ("heap-buffer-overflow") and the program exits non-zero. Dynamic shared memory is an
// exact-size malloc too (emu.cpp), and static __shared__ arrays keep ASan's global redzones.
//
// usage: emu_asan KERNEL GX,GY,GZ BX,BY,BZ SHARED_BYTES [--reverse] ARG...
//   ARG: f32buf:N (N floats, pseudo-random in [-3, 3))  i32:V  u32:V  f32:V
// prints "ok" (exit 0) or "error: <message>" (exit 2); ASan findings abort with its report.
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

int main(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s KERNEL GX,GY,GZ BX,BY,BZ SHARED_BYTES [--reverse] ARG...\n", argv[0]);
        return 64;
    }
    uint32_t grid[3], block[3];
    if (!dims(argv[2], grid) || !dims(argv[3], block)) {
        std::fprintf(stderr, "bad grid or block\n");
        return 64;
    }
    size_t shared = std::strtoull(argv[4], nullptr, 10);
    uint32_t flags = 0;
    int first = 5;
    if (argc > 5 && std::strcmp(argv[5], "--reverse") == 0) {
        flags = 1;
        first = 6;
    }
    // Values live in these vectors (reserved, so addresses stay put); buffers are raw mallocs.
    std::vector<int32_t> ints;
    std::vector<uint32_t> uints;
    std::vector<float> floats;
    std::vector<void*> ptrs;
    ints.reserve(argc);
    uints.reserve(argc);
    floats.reserve(argc);
    ptrs.reserve(argc);
    std::vector<clipcu_emu_arg> args;
    uint64_t state = 0x9e3779b97f4a7c15ull;
    for (int i = first; i < argc; ++i) {
        std::string a = argv[i];
        if (a.rfind("f32buf:", 0) == 0) {
            size_t n = std::strtoull(a.c_str() + 7, nullptr, 10);
            float* p = static_cast<float*>(std::malloc(n * sizeof(float)));
            for (size_t k = 0; k < n; ++k) {
                state = state * 6364136223846793005ull + 1442695040888963407ull;
                p[k] = (float)((state >> 40) * (1.0 / (1 << 24))) * 6.0f - 3.0f;
            }
            ptrs.push_back(p);
            args.push_back({0, 8, &ptrs.back()});
        } else if (a.rfind("i32:", 0) == 0) {
            ints.push_back((int32_t)std::strtol(a.c_str() + 4, nullptr, 10));
            args.push_back({1, 4, &ints.back()});
        } else if (a.rfind("u32:", 0) == 0) {
            uints.push_back((uint32_t)std::strtoul(a.c_str() + 4, nullptr, 10));
            args.push_back({2, 4, &uints.back()});
        } else if (a.rfind("f32:", 0) == 0) {
            floats.push_back(std::strtof(a.c_str() + 4, nullptr));
            args.push_back({3, 4, &floats.back()});
        } else {
            std::fprintf(stderr, "bad argument %s\n", a.c_str());
            return 64;
        }
    }
    char err[4096] = {0};
    int rc = clipcu_emu_launch(argv[1], grid, block, shared, args.data(), args.size(), flags, err, sizeof err);
    for (void* p : ptrs) std::free(p);
    if (rc != 0) {
        std::printf("error: %s\n", err);
        return 2;
    }
    std::printf("ok\n");
    return 0;
}
