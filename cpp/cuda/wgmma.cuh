// Hopper warpgroup MMA (wgmma, sm_90a only) for matmul versions 4 and 5: the shared-memory matrix
// descriptor of a 128-byte-swizzled tile, the fences around an asynchronous batch, the one
// instruction shape they use, m64n256k16 with FP32 accumulators, and the TMA loads and mbarriers
// of version 5.  The wrappers exist only where the code is compiled for sm_90a (PYW_HAS_WGMMA);
// callers guard their bodies with it.
//
// K-major layout (PTX ISA, "Shared Memory Matrix Layout", 128B swizzle): rows of 64 16-bit
// elements = 128 bytes, stored one after another; within each group of 8 rows (1024 bytes, the
// swizzle atom, 1024-byte aligned) the 16-byte chunk c of row r sits at chunk position c ^ (r % 8).
// SBO = 1024 bytes steps from one 8-row group to the next; LBO is not used by a swizzled K-major
// layout whose K extent (16 elements = 32 bytes) lies inside one 128-byte row (it is set to 16
// bytes, as the TMA-based Hopper kernels do).  Stepping K by 16 inside the 64-wide row is adding 32
// bytes to the start address: the hardware applies the XOR to the final address bits, so the same
// rule holds for every 16-column slice.
//
// MN-major layout (B read as it lies in a row-major [K, N] matrix, imm-trans-b = 1): the atom is
// 8 k-rows of 64 n-values (128 bytes each, 1024 bytes, chunk c of k-row r at c ^ (r % 8)); LBO is
// the byte stride from one 64-wide n-atom to the next, SBO = 1024 from one 8-row k-group to the
// next -- the canonical layout ((8 chunks of 8 n, n-atoms), (8 k, k-groups)) : ((16 B, LBO),
// (128 B, SBO)) of CUTLASS's GMMA descriptors.  A K step of 16 is 2 k-groups: +2048 bytes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PYW_HAS_WGMMA 1
#endif

namespace pyworkloads::cuda {

__device__ __forceinline__ uint64_t wgmma_desc_sw128(uint32_t smem_byte_addr, uint32_t lbo = 16, uint32_t sbo = 1024) {
    return uint64_t((smem_byte_addr & 0x3FFFF) >> 4)     // start address, 16-byte units
           | (uint64_t((lbo & 0x3FFFF) >> 4) << 16)     // leading-dimension byte offset
           | (uint64_t((sbo & 0x3FFFF) >> 4) << 32)     // stride-dimension byte offset
           | (uint64_t(1) << 62);                       // swizzle mode 1 = 128 bytes
}

#if defined(PYW_HAS_WGMMA)
// Order this thread's earlier generic-proxy writes to shared memory (cp.async landing, st.shared)
// before later async-proxy reads of it (wgmma operands).
__device__ __forceinline__ void fence_proxy_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Before the first wgmma of a batch: the accumulator registers' earlier writes are visible to it.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// A compiler-only fence on the accumulators (no instruction): their reads and writes may not move
// across it, e.g. an epilogue read above the wgmma_wait that makes the values final.
__device__ __forceinline__ void wgmma_fence_operands(float (&d)[128]) {
#pragma unroll
    for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d[64x256] += A[64x16] B[16x256] from shared memory (descriptors above), scale-d 1; A K-major,
// B K-major (kTransB 0) or MN-major (kTransB 1).  Accumulator d[4 j + e] of thread t (warp
// w = (t / 32) % 4 of the warpgroup, lane l = t % 32) is row 16 w + l / 4 + 8 (e / 2), column
// 8 j + 2 (l % 4) + e % 2 -- the m16n8 C fragment, once per 8-column block j.
// The 128 accumulator operands of an m64n256 wgmma, %0..%127 in the asm string and d[0..127] bound.
// clang-format off: the operand tables read best 16 (8) to a line
#define PYW_WGMMA_D128_REGS \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define PYW_WGMMA_D128_OUTS(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
    "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
    "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
    "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
    "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
// clang-format on
#define PYW_WGMMA_M64N256K16(type)                                                                         \
    asm volatile("{\n wgmma.mma_async.sync.aligned.m64n256k16.f32." type "." type " {" PYW_WGMMA_D128_REGS \
                 "}, %128, %129, 1, 1, 1, 0, %130;\n}\n"                                                   \
                 : PYW_WGMMA_D128_OUTS(d)                                                                  \
                 : "l"(desc_a), "l"(desc_b), "n"(kTransB)                                                  \
                 : "memory")

template <class T, int kTransB>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
    static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "16-bit inputs");
    if constexpr (std::is_same_v<T, __half>) PYW_WGMMA_M64N256K16("f16");
    else PYW_WGMMA_M64N256K16("bf16");
}

// ---- TMA and mbarriers (matmul version 5, algo="wgmma_tma") -----------------------------------
// An mbarrier is a 64-bit shared-memory object: threads arrive on it, the TMA unit adds the bytes
// it has written (complete_tx), and a phase completes when the expected arrivals and bytes are in.
// try_wait.parity P returns once the phase with parity P has completed.
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void fence_mbarrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Wait for phase `parity` of the barrier.  The loop is one asm block (as CUTLASS's): spelled in C++
// around a single try_wait, ptxas injects a wgmma wait into the loop (C7517), serialising the
// batches.  The first try costs nothing extra; after a failed one the wait reads the global timer
// and traps once it has waited kMbarWaitLimitNs (10 s, where one phase normally takes microseconds),
// so a protocol bug fails the call with an error instead of hanging the GPU until a watchdog.
constexpr uint64_t kMbarWaitLimitNs = 10ull * 1000 * 1000 * 1000;
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile(
        "{\n"
        " .reg .pred p;\n"
        " .reg .u64 t0, t1;\n"
        " mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        " @p bra DONE;\n"
        " mov.u64 t0, %%globaltimer;\n"
        "WAIT:\n"
        " mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        " @p bra DONE;\n"
        " mov.u64 t1, %%globaltimer;\n"
        " sub.u64 t1, t1, t0;\n"
        " setp.lt.u64 p, t1, %2;\n"
        " @p bra WAIT;\n"
        " trap;\n"
        "DONE:\n"
        "}\n" ::"r"(bar),
        "r"(parity), "l"(kMbarWaitLimitNs)
        : "memory");
}

// One TMA tile load global -> shared (2-D tensor map, coordinates innermost first), completing
// its bytes on `bar`.  The map lives in kernel parameter space (__grid_constant__).
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void* tmap, int32_t c0, int32_t c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::
            "r"(dst),
        "l"(reinterpret_cast<uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

#endif  // PYW_HAS_WGMMA

}  // namespace pyworkloads::cuda
