// The kernels' output arrays, from a cache of recycled blocks.
//
// A NumPy array of more than 32 MB is a fresh mmap each time: glibc serves blocks that large
// straight from the kernel and unmaps them when they are freed.  Every page of such an array
// faults on its first write, and with NumPy's MADV_HUGEPAGE advice the kernel may stop to compact
// memory for 2 MB pages right then.  SAM's image encoder makes arrays that size in every block
// (the 4096 x 3072 MLP hidden state twice, out of fc1 and out of GELU; the 4096 x 2304 QKV): about
// a gigabyte of first-touch faults per image (benchmarks/README.md has what that cost).
//
// So outputs of MIN_BYTES and more come from here: a block goes back to the cache when its array
// is freed (the array's base is a capsule that returns it) and is handed out again to the next
// output of the same size -- a transformer asks for the same few sizes block after block.  At most
// limit() bytes are kept (the largest blocks are released first); limit 0 turns the cache off.
// Each ISA module has its own cache; `_output_cache` reads and sets it.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <vector>

namespace pyworkloads::outputs {
namespace py = pybind11;

constexpr size_t MIN_BYTES = size_t(1) << 20;   // smaller outputs: malloc reuses their memory anyway
constexpr std::align_val_t ALIGN{64};            // a cache line: whole-vector loads never straddle two

struct Cache {
    std::mutex mu;
    std::multimap<size_t, void*> idle;   // bytes -> blocks not in use
    size_t idle_bytes = 0;
    size_t limit = size_t(1) << 30;      // 1 GiB: several of the largest activations of a ViT-H
    size_t hits = 0, misses = 0;
    ~Cache() {
        for (auto& [bytes, p] : idle) ::operator delete(p, ALIGN);
    }
};

inline Cache& cache() {
    static Cache c;
    return c;
}

// Drops the largest idle blocks until `need` more bytes fit under the limit.  Caller holds mu.
inline void make_room(Cache& c, size_t need) {
    while (!c.idle.empty() && c.idle_bytes + need > c.limit) {
        auto last = std::prev(c.idle.end());
        c.idle_bytes -= last->first;
        ::operator delete(last->second, ALIGN);
        c.idle.erase(last);
    }
}

inline void* take(size_t bytes) {
    Cache& c = cache();
    {
        std::lock_guard<std::mutex> lock(c.mu);
        auto it = c.idle.find(bytes);
        if (it != c.idle.end()) {
            void* p = it->second;
            c.idle.erase(it);
            c.idle_bytes -= bytes;
            ++c.hits;
            return p;
        }
        ++c.misses;
    }
    return ::operator new(bytes, ALIGN);   // std::bad_alloc -> MemoryError
}

inline void give(void* p, size_t bytes) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    if (bytes > c.limit) {
        ::operator delete(p, ALIGN);
        return;
    }
    make_room(c, bytes);
    c.idle.emplace(bytes, p);
    c.idle_bytes += bytes;
}

struct Block {
    void* p;
    size_t bytes;
};

// A new C-contiguous float32 array of `shape` (contents undefined), from the cache when large.
inline py::array_t<float, py::array::c_style> new_array(const std::vector<py::ssize_t>& shape) {
    size_t bytes = sizeof(float);
    for (py::ssize_t d : shape)
        if (d < 0 || __builtin_mul_overflow(bytes, static_cast<size_t>(d), &bytes)) {
            std::string dims;
            for (py::ssize_t e : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(e);
            throw py::value_error("an output of shape (" + dims + ") is too large to allocate");
        }
    if (bytes < MIN_BYTES) return py::array_t<float, py::array::c_style>(shape);
    void* p = take(bytes);
    py::capsule owner;
    try {
        owner = py::capsule(new Block{p, bytes}, [](void* b) {
            auto* blk = static_cast<Block*>(b);
            give(blk->p, blk->bytes);
            delete blk;
        });
    } catch (...) {
        give(p, bytes);
        throw;
    }
    return py::array_t<float, py::array::c_style>(shape, static_cast<float*>(p), owner);
}

// _output_cache(limit=None): the cache's counters; with a limit (bytes, >= 0), sets it first.
inline py::dict stats(py::object limit) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    if (!limit.is_none()) {
        const long long v = limit.cast<long long>();
        if (v < 0) throw py::value_error("_output_cache: limit must be a number of bytes >= 0");
        c.limit = static_cast<size_t>(v);
        make_room(c, 0);
    }
    py::dict d;
    d["limit"] = c.limit;
    d["idle_bytes"] = c.idle_bytes;
    d["idle_blocks"] = c.idle.size();
    d["hits"] = c.hits;
    d["misses"] = c.misses;
    return d;
}
}  // namespace pyworkloads::outputs
