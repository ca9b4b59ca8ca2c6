// A caching allocator for device memory (the scheme of PyTorch's CUDACachingAllocator, research
// cuda-backend.md §4, written anew): cudaMalloc is slow and synchronizes, so freed blocks are kept
// and reused.
//
// - Sizes round up to 512 B. Requests up to 1 MiB come from 2 MiB segments (the small pool);
//   larger ones from segments of their own size rounded to 2 MiB (the large pool).
// - A free block is split when the rest is worth keeping, and merged with free neighbours of the
//   same segment when freed, so fragmentation stays bounded.
// - Blocks belong to the stream that allocated them and are reused only there: work queued on
//   that stream is ordered after the previous user's. A block also used on another stream
//   (record_stream) returns to the pool only once events recorded on those streams have passed.
// - On cudaMalloc failure the cache's unused segments are released and the call retried; a final
//   failure raises a bvllm::Error with the request and the allocator's statistics.
//
// CUDA-only header.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "runtime/cuda/backend.h"
#include "runtime/cuda/stream.h"

namespace bvllm::cuda {

class CachingAllocator {
 public:
  static CachingAllocator& for_device(int device);
  ~CachingAllocator();  // defined where Block is complete

  void* allocate(size_t nbytes, cudaStream_t stream);
  void free(void* ptr);
  // `ptr` is also used by work on `stream`: its reuse waits for that work.
  void record_stream(void* ptr, cudaStream_t stream);
  // Returns every cached segment with no allocated block to the driver.
  void empty_cache();
  MemoryStats stats() const;
  void reset_peak();
  static void set_poison(bool poison);

 private:
  struct Block {
    char* ptr;
    size_t size;
    cudaStream_t stream;
    bool small;
    bool allocated = false;
    Block* prev = nullptr;  // neighbours within the same segment
    Block* next = nullptr;
    std::vector<cudaStream_t> other_streams;      // record_stream() users
    std::vector<std::unique_ptr<Event>> pending;  // events the deferred free waits for
  };

  struct BySize {
    bool operator()(const Block* a, const Block* b) const;
  };
  using FreeSet = std::set<Block*, BySize>;

  explicit CachingAllocator(int device) : device_(device) {}
  Block* find_free(FreeSet& pool, size_t size, cudaStream_t stream);
  Block* new_segment(size_t size, cudaStream_t stream, bool small);
  Block* make_block(char* ptr, size_t size, cudaStream_t stream, bool small);
  void drop_block(Block* block);
  void release_free_segments();
  void return_to_pool(Block* block);
  void process_deferred();

  int device_;
  mutable std::mutex mutex_;
  FreeSet small_free_, large_free_;
  std::unordered_map<void*, Block*> live_;                     // allocated blocks by pointer
  std::vector<Block*> deferred_;                               // freed, waiting for other streams' events
  std::unordered_map<Block*, std::unique_ptr<Block>> blocks_;  // owns every Block
  MemoryStats stats_;
};

}  // namespace bvllm::cuda
