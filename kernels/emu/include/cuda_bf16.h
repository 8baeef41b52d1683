// Stand-in for <cuda_bf16.h> when a kernel is compiled for the emulator: everything is in emu.h.
#pragma once
#include "emu.h"
