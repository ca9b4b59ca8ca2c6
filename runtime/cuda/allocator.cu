#include <algorithm>
#include <atomic>
#include <map>

#include "runtime/cuda/allocator.h"
#include "runtime/cuda/check.h"
#include "runtime/cuda/stream.h"
#include "runtime/error.h"

namespace bvllm::cuda {

namespace {
constexpr size_t kRound = 512;              // every size is a multiple of this
constexpr size_t kSmallRequest = 1 << 20;   // <= 1 MiB: small pool
constexpr size_t kSmallSegment = 2 << 20;   // small-pool segments are 2 MiB
constexpr size_t kLargeRound = 2 << 20;     // large segments round to 2 MiB
constexpr size_t kMinLargeSplit = 1 << 20;  // keep a large remainder only if >= 1 MiB

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }
std::atomic<bool> g_poison{false};
}  // namespace

bool CachingAllocator::BySize::operator()(const Block* a, const Block* b) const {
  if (a->stream != b->stream) return a->stream < b->stream;
  if (a->size != b->size) return a->size < b->size;
  return a->ptr < b->ptr;
}

CachingAllocator::~CachingAllocator() = default;

CachingAllocator& CachingAllocator::for_device(int device) {
  static std::mutex mutex;
  static std::map<int, CachingAllocator*> allocators;  // never destroyed: frees can run at exit
  std::lock_guard<std::mutex> lock(mutex);
  auto& a = allocators[device];
  if (!a) a = new CachingAllocator(device);
  return *a;
}

CachingAllocator::Block* CachingAllocator::find_free(FreeSet& pool, size_t size, cudaStream_t stream) {
  Block key{nullptr, size, stream, false};
  auto it = pool.lower_bound(&key);
  if (it == pool.end() || (*it)->stream != stream) return nullptr;
  Block* b = *it;
  pool.erase(it);
  return b;
}

CachingAllocator::Block* CachingAllocator::make_block(char* ptr, size_t size, cudaStream_t stream, bool small) {
  auto block = std::make_unique<Block>(Block{ptr, size, stream, small});
  Block* raw = block.get();
  blocks_.emplace(raw, std::move(block));
  return raw;
}

void CachingAllocator::drop_block(Block* block) { blocks_.erase(block); }

CachingAllocator::Block* CachingAllocator::new_segment(size_t size, cudaStream_t stream, bool small) {
  void* ptr = nullptr;
  cudaError_t status = cudaMalloc(&ptr, size);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // reset the error this call left, then retry with the cache released
    release_free_segments();
    ++stats_.cache_flushes;
    status = cudaMalloc(&ptr, size);
  }
  if (status != cudaSuccess) {
    cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    throw Error(str_cat("CUDA out of memory on device ", device_, ": tried to allocate ", size, " bytes; ",
                        stats_.allocated_bytes, " bytes allocated in tensors, ", stats_.reserved_bytes,
                        " reserved by bvllm, ", free_bytes, " free of ", total_bytes, " (", cudaGetErrorString(status),
                        ")"));
  }
  ++stats_.device_mallocs;
  stats_.reserved_bytes += static_cast<int64_t>(size);
  stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
  return make_block(static_cast<char*>(ptr), size, stream, small);
}

void* CachingAllocator::allocate(size_t nbytes, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  process_deferred();
  const size_t size = round_up(std::max<size_t>(nbytes, 1), kRound);
  const bool small = size <= kSmallRequest;
  FreeSet& pool = small ? small_free_ : large_free_;
  Block* b = find_free(pool, size, stream);
  if (!b) b = new_segment(small ? kSmallSegment : round_up(size, kLargeRound), stream, small);

  // Split off the rest when it is worth keeping.
  const size_t rest = b->size - size;
  if (rest >= (small ? kRound : kMinLargeSplit)) {
    Block* r = make_block(b->ptr + size, rest, stream, small);
    r->prev = b;
    r->next = b->next;
    if (b->next) b->next->prev = r;
    b->next = r;
    b->size = size;
    pool.insert(r);
  }
  b->allocated = true;
  live_[b->ptr] = b;
  if (g_poison) BVLLM_CUDA_CHECK(cudaMemsetAsync(b->ptr, 0xFF, b->size, stream));
  ++stats_.allocations;
  stats_.allocated_bytes += static_cast<int64_t>(b->size);
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  return b->ptr;
}

void CachingAllocator::free(void* ptr) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.find(ptr);
  if (it == live_.end()) return;  // not ours: ignore rather than corrupt the pools
  Block* b = it->second;
  live_.erase(it);
  b->allocated = false;
  stats_.allocated_bytes -= static_cast<int64_t>(b->size);
  if (b->other_streams.empty()) {
    return_to_pool(b);
    return;
  }
  for (cudaStream_t s : b->other_streams) {
    auto event = std::make_unique<Event>();
    event->record(s);
    b->pending.push_back(std::move(event));
  }
  b->other_streams.clear();
  deferred_.push_back(b);
}

void CachingAllocator::record_stream(void* ptr, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.find(ptr);
  if (it == live_.end() || it->second->stream == stream) return;
  auto& others = it->second->other_streams;
  if (std::find(others.begin(), others.end(), stream) == others.end()) others.push_back(stream);
}

void CachingAllocator::process_deferred() {
  auto ready = [](Block* b) {
    return std::all_of(b->pending.begin(), b->pending.end(), [](const auto& e) { return e->done(); });
  };
  auto still = std::partition(deferred_.begin(), deferred_.end(), [&](Block* b) { return !ready(b); });
  for (auto it = still; it != deferred_.end(); ++it) {
    (*it)->pending.clear();
    return_to_pool(*it);
  }
  deferred_.erase(still, deferred_.end());
}

// Merges a freed block with free neighbours of its segment and makes it available again.
void CachingAllocator::return_to_pool(Block* b) {
  FreeSet& pool = b->small ? small_free_ : large_free_;
  auto absorb = [&](Block* left, Block* right) {  // right disappears into left
    left->size += right->size;
    left->next = right->next;
    if (right->next) right->next->prev = left;
  };
  auto mergeable = [&](Block* n) { return n && !n->allocated && n->pending.empty() && pool.count(n); };
  if (mergeable(b->next)) {
    Block* n = b->next;
    pool.erase(n);
    absorb(b, n);
    drop_block(n);
  }
  if (mergeable(b->prev)) {
    Block* p = b->prev;
    pool.erase(p);
    absorb(p, b);
    drop_block(b);
    b = p;
  }
  pool.insert(b);
}

// Segments whose single block is free (no neighbours) go back to the driver.
void CachingAllocator::release_free_segments() {
  for (FreeSet* pool : {&small_free_, &large_free_}) {
    for (auto it = pool->begin(); it != pool->end();) {
      Block* b = *it;
      if (b->prev || b->next) {
        ++it;
        continue;
      }
      cudaFree(b->ptr);
      stats_.reserved_bytes -= static_cast<int64_t>(b->size);
      it = pool->erase(it);
      drop_block(b);
    }
  }
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  process_deferred();
  release_free_segments();
}

MemoryStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
  stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

void CachingAllocator::set_poison(bool poison) { g_poison = poison; }
void set_poison_allocations(bool poison) { CachingAllocator::set_poison(poison); }

MemoryStats memory_stats(int device) { return CachingAllocator::for_device(device).stats(); }
void reset_peak_memory(int device) { CachingAllocator::for_device(device).reset_peak(); }
void empty_cache(int device) { CachingAllocator::for_device(device).empty_cache(); }

}  // namespace bvllm::cuda
