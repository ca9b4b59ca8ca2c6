#include "runtime/io/pth.h"

#include <fcntl.h>     // defines: open, O_RDONLY
#include <sys/mman.h>  // defines: mmap, munmap
#include <sys/stat.h>  // defines: fstat
#include <unistd.h>    // defines: close

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace bvllm {

static_assert(std::endian::native == std::endian::little,
              "torch.save writes little-endian storages and zip fields; big-endian hosts would need byte swaps");

namespace {

template <typename... Args>
[[noreturn]] void fail(const std::string& path, const Args&... args) {
  throw Error(str_cat(path, ": ", args...));
}

// Little-endian unsigned integer of `n` bytes at `p` (zip fields and pickle arguments).
uint64_t le(const char* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

std::string hex_byte(unsigned char b) {
  const char* digits = "0123456789abcdef";
  return std::string("0x") + digits[b >> 4] + digits[b & 15];
}

// The whole file, mapped private and writable (copy-on-write) as safetensors.cc maps it: tensors
// that view it may be written in place without touching the file.
struct Mapping {
  void* base = nullptr;
  size_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (base) ::munmap(base, size);
  }
  const char* bytes() const { return static_cast<const char*>(base); }
};

std::shared_ptr<const Mapping> map_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "cannot open: ", std::strerror(errno));
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  const int stat_errno = errno;
  auto mapping = std::make_shared<Mapping>();
  if (stat_ok && S_ISREG(st.st_mode) && st.st_size > 0) {
    mapping->size = static_cast<size_t>(st.st_size);
    void* base = ::mmap(nullptr, mapping->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    mapping->base = base == MAP_FAILED ? nullptr : base;
  }
  const int map_errno = errno;
  ::close(fd);
  if (!stat_ok) fail(path, "cannot stat: ", std::strerror(stat_errno));
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  if (st.st_size == 0) fail(path, "file is empty (truncated?)");
  if (!mapping->base) fail(path, "cannot mmap ", st.st_size, " bytes: ", std::strerror(map_errno));
  return mapping;
}

// --- zip container (PKWARE APPNOTE.TXT 6.3.x; section numbers below are APPNOTE's) -----------

constexpr uint32_t kLocalHeaderSig = 0x04034b50;    // 4.3.7 local file header
constexpr uint32_t kCentralHeaderSig = 0x02014b50;  // 4.3.12 central directory file header
constexpr uint32_t kEocdSig = 0x06054b50;           // 4.3.16 end of central directory record
constexpr uint32_t kZip64EocdSig = 0x06064b50;      // 4.3.14 zip64 end of central directory record
constexpr uint32_t kZip64LocatorSig = 0x07064b50;   // 4.3.15 zip64 end of central directory locator
constexpr size_t kEocdBytes = 22, kZip64EocdBytes = 56, kZip64LocatorBytes = 20;
constexpr size_t kCentralHeaderBytes = 46, kLocalHeaderBytes = 30;

struct ZipEntry {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;
  uint64_t compressed_size = 0;
  uint64_t size = 0;
  uint64_t header_offset = 0;  // of the local header
};

class ZipArchive {
 public:
  ZipArchive(std::string path, std::shared_ptr<const Mapping> mapping)
      : path_(std::move(path)), mapping_(std::move(mapping)) {
    read_directory();
  }

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &entries_[it->second];
  }

  // The bytes of a stored entry, after checking its local header (4.3.7): the data follows the
  // local header's own name and extra field, whose length may differ from the central one (torch
  // pads the local extra field so that every entry's data starts at a multiple of 64 bytes).
  std::string_view data(const ZipEntry& e) const {
    if (e.flags & 1) fail(path_, "zip entry '", e.name, "' is encrypted");
    if (e.method != 0)
      fail(path_, "zip entry '", e.name, "' is compressed (method ", e.method,
           "; 8 is deflate): torch.save stores entries uncompressed, so re-save the object with torch.save");
    const char* h = at(e.header_offset, kLocalHeaderBytes, str_cat("the local header of '", e.name, "'"));
    if (le(h, 4) != kLocalHeaderSig)
      fail(path_, "zip entry '", e.name, "': no local header signature at offset ", e.header_offset);
    const uint64_t start = e.header_offset + kLocalHeaderBytes + le(h + 26, 2) + le(h + 28, 2);
    return {at(start, e.size, str_cat("the data of '", e.name, "'")), e.size};
  }

 private:
  // `n` bytes at `offset`, or a "truncated" error saying what was being read.
  const char* at(uint64_t offset, uint64_t n, const std::string& what) const {
    if (offset > mapping_->size || n > mapping_->size - offset)
      fail(path_, "file is truncated: ", what, " needs bytes [", offset, ", ", offset + n, ") but the file has ",
           mapping_->size);
    return mapping_->bytes() + offset;
  }

  void read_directory() {
    const char* bytes = mapping_->bytes();
    const size_t size = mapping_->size;
    // The end of central directory record ends the file, followed only by a comment of up to
    // 65535 bytes: search backwards from the last possible position (as Python's zipfile).
    std::optional<size_t> eocd;
    if (size >= kEocdBytes) {
      const size_t lowest = size > kEocdBytes + 65535 ? size - kEocdBytes - 65535 : 0;
      for (size_t pos = size - kEocdBytes + 1; pos-- > lowest;) {
        if (le(bytes + pos, 4) == kEocdSig && pos + kEocdBytes + le(bytes + pos + 20, 2) <= size) {
          eocd = pos;
          break;
        }
      }
    }
    if (!eocd) {
      if (size >= 4 && le(bytes, 4) == kLocalHeaderSig)
        fail(path_, "file is truncated: it starts as a zip archive but has no end of central directory record");
      fail(path_, "not a zip archive (torch.save has written zip archives since PyTorch 1.6)");
    }
    const char* end = bytes + *eocd;
    uint64_t disk = le(end + 4, 2), cd_disk = le(end + 6, 2), count = le(end + 10, 2);
    uint64_t cd_size = le(end + 12, 4), cd_offset = le(end + 16, 4);
    // ZIP64 (4.3.14, 4.3.15): the locator sits right before the end record and points at the
    // zip64 end record, whose 64-bit fields replace the saturated 16- and 32-bit ones.
    if (*eocd >= kZip64LocatorBytes && le(end - kZip64LocatorBytes, 4) == kZip64LocatorSig) {
      const uint64_t record = le(end - kZip64LocatorBytes + 8, 8);
      const char* z = at(record, kZip64EocdBytes, "the zip64 end of central directory record");
      if (le(z, 4) != kZip64EocdSig) fail(path_, "no zip64 end of central directory record at offset ", record);
      disk = le(z + 16, 4);
      cd_disk = le(z + 20, 4);
      count = le(z + 32, 8);
      cd_size = le(z + 40, 8);
      cd_offset = le(z + 48, 8);
    } else if (count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) {
      fail(path_, "the end of central directory record needs zip64 fields, but no zip64 locator precedes it");
    }
    if (disk != 0 || cd_disk != 0) fail(path_, "split (multi-disk) zip archives are not supported");

    const char* cd = at(cd_offset, cd_size, "the central directory");
    uint64_t pos = 0;
    for (uint64_t i = 0; i < count; ++i) {
      if (cd_size - pos < kCentralHeaderBytes || le(cd + pos, 4) != kCentralHeaderSig)
        fail(path_, "central directory entry ", i, " of ", count, " is malformed (at offset ", cd_offset + pos, ")");
      const char* h = cd + pos;
      ZipEntry e;
      e.flags = static_cast<uint16_t>(le(h + 8, 2));
      e.method = static_cast<uint16_t>(le(h + 10, 2));
      e.compressed_size = le(h + 20, 4);
      e.size = le(h + 24, 4);
      const uint64_t name_len = le(h + 28, 2), extra_len = le(h + 30, 2), comment_len = le(h + 32, 2);
      e.header_offset = le(h + 42, 4);
      if (cd_size - pos - kCentralHeaderBytes < name_len + extra_len + comment_len)
        fail(path_, "central directory entry ", i, " runs past the end of the central directory");
      e.name.assign(h + kCentralHeaderBytes, name_len);
      read_zip64_extra(e, h + kCentralHeaderBytes + name_len, extra_len);
      if (e.method == 0 && e.compressed_size != e.size)
        fail(path_, "zip entry '", e.name, "' is stored but its sizes differ (", e.compressed_size, " and ", e.size,
             ")");
      index_.emplace(e.name, entries_.size());
      entries_.push_back(std::move(e));
      pos += kCentralHeaderBytes + name_len + extra_len + comment_len;
    }
  }

  // 4.5.3: the zip64 extended information extra field (tag 0x0001) holds, in this order, the
  // sizes and the header offset whose 32-bit fields in the central header are 0xFFFFFFFF.
  void read_zip64_extra(ZipEntry& e, const char* extra, uint64_t len) const {
    for (uint64_t p = 0; p + 4 <= len;) {
      const uint64_t tag = le(extra + p, 2), n = le(extra + p + 2, 2);
      if (p + 4 + n > len) break;
      if (tag == 0x0001) {
        uint64_t q = p + 4;
        for (uint64_t* field : {&e.size, &e.compressed_size, &e.header_offset}) {
          if (*field != 0xFFFFFFFF) continue;
          if (q + 8 > p + 4 + n) fail(path_, "zip entry '", e.name, "': zip64 extra field is too short");
          *field = le(extra + q, 8);
          q += 8;
        }
      }
      p += 4 + n;
    }
  }

  std::string path_;
  std::shared_ptr<const Mapping> mapping_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> index_;
};

// --- pickle (opcode names as in Python's Lib/pickletools.py) ----------------------------------

struct PyValue;
using Value = std::shared_ptr<PyValue>;

// A persistent id ('storage', torch.FloatStorage, key, location, numel): the bytes of
// <root>/data/<key>, read as the element type the storage class names.
struct PyStorage {
  std::string type;  // "torch.FloatStorage"
  std::string key;
};

// torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, ...), offset in elements.
struct PyTensor {
  std::shared_ptr<const PyStorage> storage;
  int64_t offset = 0;
  Shape shape, strides;
};

// The Python objects a state dict is made of. Values are shared as Python shares them: the memo
// hands out the same object again, so an APPEND after a BINGET changes every holder.
struct PyValue {
  enum class Kind { None, Bool, Int, Float, String, Bytes, Tuple, List, Dict, Global, Storage, Tensor };
  Kind kind = Kind::None;
  int64_t i = 0;                              // Bool, Int
  double f = 0;                               // Float
  std::string s;                              // String, Bytes; Global as "module.name"
  std::vector<Value> items;                   // Tuple, List
  std::vector<std::pair<Value, Value>> dict;  // Dict, in insertion order
  std::shared_ptr<const PyStorage> storage;   // Storage
  PyTensor tensor;                            // Tensor
};

Value make(PyValue::Kind kind) {
  auto v = std::make_shared<PyValue>();
  v->kind = kind;
  return v;
}

constexpr const char* kOrderedDict = "collections.OrderedDict";
constexpr const char* kRebuildTensor = "torch._utils._rebuild_tensor_v2";
constexpr const char* kRebuildParameter = "torch._utils._rebuild_parameter";
constexpr const char* kRebuildParameterWithState = "torch._utils._rebuild_parameter_with_state";

// The globals a state dict refers to: the callables above and the storage classes
// (torch.FloatStorage, ...), whose dtype is checked only when a tensor uses them.
bool known_global(const std::string& name) {
  if (name == kOrderedDict || name == kRebuildTensor || name == kRebuildParameter || name == kRebuildParameterWithState)
    return true;
  return name.starts_with("torch.") && name.ends_with("Storage") && name.find('.', 6) == std::string::npos;
}

// A stack machine for the opcodes that torch.save's pickles (protocol 2) use, plus the few
// protocol 4 forms (FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL) a caller's pickle_protocol
// may bring. Every other opcode is refused rather than guessed at.
class Unpickler {
 public:
  Unpickler(std::string where, std::string_view data) : where_(std::move(where)), data_(data) {}

  Value run() {
    while (true) {
      op_at_ = pos_;
      const unsigned char op = static_cast<unsigned char>(*take(1));
      switch (op) {
        case 0x80: take(1); break;                          // PROTO
        case 0x95: take(8); break;                          // FRAME (protocol 4 framing; nothing to do)
        case '.': return pop();                             // STOP
        case '(': marks_.push_back(stack_.size()); break;   // MARK
        case '0': pop(); break;                             // POP
        case '}': push(make(PyValue::Kind::Dict)); break;   // EMPTY_DICT
        case ']': push(make(PyValue::Kind::List)); break;   // EMPTY_LIST
        case ')': push(make(PyValue::Kind::Tuple)); break;  // EMPTY_TUPLE
        case 't': push(tuple(pop_mark())); break;           // TUPLE
        case 0x85: push(tuple(pop_n(1))); break;            // TUPLE1
        case 0x86: push(tuple(pop_n(2))); break;            // TUPLE2
        case 0x87: push(tuple(pop_n(3))); break;            // TUPLE3
        case 'N': push(make(PyValue::Kind::None)); break;   // NONE
        case 0x88: push(boolean(true)); break;              // NEWTRUE
        case 0x89: push(boolean(false)); break;             // NEWFALSE
        case 'J': push(integer(static_cast<int32_t>(le(take(4), 4)))); break;   // BININT
        case 'K': push(integer(static_cast<int64_t>(le(take(1), 1)))); break;   // BININT1
        case 'M': push(integer(static_cast<int64_t>(le(take(2), 2)))); break;   // BININT2
        case 0x8a: push(long1()); break;                                        // LONG1
        case 'G': push(binfloat()); break;                                      // BINFLOAT
        case 'X': push(string(le(take(4), 4), PyValue::Kind::String)); break;   // BINUNICODE
        case 0x8c: push(string(le(take(1), 1), PyValue::Kind::String)); break;  // SHORT_BINUNICODE
        case 0x8d: push(string(le(take(8), 8), PyValue::Kind::String)); break;  // BINUNICODE8
        case 'C': push(string(le(take(1), 1), PyValue::Kind::Bytes)); break;    // SHORT_BINBYTES
        case 'B': push(string(le(take(4), 4), PyValue::Kind::Bytes)); break;    // BINBYTES
        case 'q': memo_[le(take(1), 1)] = top(); break;                         // BINPUT
        case 'r': memo_[le(take(4), 4)] = top(); break;                         // LONG_BINPUT
        case 0x94: memo_[memo_.size()] = top(); break;                          // MEMOIZE
        case 'h': push(memo_get(le(take(1), 1))); break;                        // BINGET
        case 'j': push(memo_get(le(take(4), 4))); break;                        // LONG_BINGET
        case 'c': {                                                             // GLOBAL
          std::string module = line();
          push(global(module + "." + line()));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          Value name = pop(), module = pop();
          if (module->kind != PyValue::Kind::String || name->kind != PyValue::Kind::String)
            error("STACK_GLOBAL needs two strings");
          push(global(module->s + "." + name->s));
          break;
        }
        case 's': {  // SETITEM
          Value value = pop(), key = pop();
          dict_of(top(), "SETITEM").push_back({key, value});
          break;
        }
        case 'u': {  // SETITEMS
          std::vector<Value> kv = pop_mark();
          if (kv.size() % 2) error("SETITEMS needs key/value pairs, got ", kv.size(), " items");
          auto& d = dict_of(top(), "SETITEMS");
          for (size_t k = 0; k < kv.size(); k += 2) d.push_back({kv[k], kv[k + 1]});
          break;
        }
        case 'a': {  // APPEND
          Value item = pop();
          list_of(top(), "APPEND").push_back(item);
          break;
        }
        case 'e': {  // APPENDS
          std::vector<Value> items = pop_mark();
          auto& list = list_of(top(), "APPENDS");
          list.insert(list.end(), items.begin(), items.end());
          break;
        }
        case 'Q': push(persistent_load(pop())); break;  // BINPERSID
        case 'R': {                                     // REDUCE
          Value args = pop(), callable = pop();
          push(call(callable, args));
          break;
        }
        case 0x81: {  // NEWOBJ: cls.__new__(cls, *args), which only OrderedDict may use here
          Value args = pop(), cls = pop();
          if (cls->kind != PyValue::Kind::Global || cls->s != kOrderedDict) error("NEWOBJ of ", describe(cls));
          push(make(PyValue::Kind::Dict));
          break;
        }
        case 'b':  // BUILD: sets an object's attributes, e.g. a state dict's `_metadata`, unused here
          pop();
          top();
          break;
        default:
          throw Error(str_cat(where_, ": unsupported pickle opcode ", hex_byte(op), " at offset ", op_at_,
                              " (bvllm reads the protocol 2 subset that torch.save uses for state dicts)"));
      }
    }
  }

 private:
  template <typename... Args>
  [[noreturn]] void error(const Args&... args) const {
    throw Error(str_cat(where_, " at offset ", op_at_, ": ", args...));
  }

  const char* take(uint64_t n) {
    if (n > data_.size() - pos_) error("the pickle ends inside this opcode's argument (truncated data.pkl?)");
    const char* p = data_.data() + pos_;
    pos_ += n;
    return p;
  }
  std::string line() {
    size_t nl = data_.find('\n', pos_);
    if (nl == std::string_view::npos) error("GLOBAL's argument has no newline (truncated data.pkl?)");
    std::string s(data_.substr(pos_, nl - pos_));
    pos_ = nl + 1;
    return s;
  }

  // The stack, with MARKs as fences: nothing below the innermost mark may be popped.
  size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(Value v) { stack_.push_back(std::move(v)); }
  const Value& top() const {
    if (stack_.size() <= fence()) error("stack underflow");
    return stack_.back();
  }
  Value pop() {
    Value v = top();
    stack_.pop_back();
    return v;
  }
  std::vector<Value> pop_n(size_t n) {
    if (stack_.size() < fence() + n) error("stack underflow");
    std::vector<Value> items(stack_.end() - static_cast<ptrdiff_t>(n), stack_.end());
    stack_.resize(stack_.size() - n);
    return items;
  }
  std::vector<Value> pop_mark() {
    if (marks_.empty()) error("no MARK to pop to");
    std::vector<Value> items(stack_.begin() + static_cast<ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  Value memo_get(uint64_t index) const {
    auto it = memo_.find(index);
    if (it == memo_.end()) error("memo index ", index, " was never stored");
    return it->second;
  }

  static Value tuple(std::vector<Value> items) {
    Value v = make(PyValue::Kind::Tuple);
    v->items = std::move(items);
    return v;
  }
  static Value boolean(bool b) {
    Value v = make(PyValue::Kind::Bool);
    v->i = b;
    return v;
  }
  static Value integer(int64_t i) {
    Value v = make(PyValue::Kind::Int);
    v->i = i;
    return v;
  }
  // LONG1: a little-endian two's-complement integer of n bytes; more than 8 do not fit int64.
  Value long1() {
    const uint64_t n = le(take(1), 1);
    if (n > 8) error("LONG1 integer of ", n, " bytes does not fit in 64 bits");
    const char* p = take(n);
    uint64_t u = le(p, static_cast<int>(n));
    if (n > 0 && n < 8 && (static_cast<unsigned char>(p[n - 1]) & 0x80)) u |= ~uint64_t{0} << (8 * n);
    return integer(static_cast<int64_t>(u));
  }
  // BINFLOAT: an 8-byte big-endian IEEE double.
  Value binfloat() {
    const char* p = take(8);
    uint64_t bits = 0;
    for (int k = 0; k < 8; ++k) bits = (bits << 8) | static_cast<unsigned char>(p[k]);
    Value v = make(PyValue::Kind::Float);
    v->f = std::bit_cast<double>(bits);
    return v;
  }
  Value string(uint64_t n, PyValue::Kind kind) {
    Value v = make(kind);
    v->s.assign(take(n), n);
    return v;
  }
  Value global(const std::string& name) const {
    if (!known_global(name))
      error("unsupported global '", name,
            "': bvllm reads tensors, dicts, lists, tuples, numbers and strings (save model.state_dict() instead)");
    Value v = make(PyValue::Kind::Global);
    v->s = name;
    return v;
  }

  std::vector<std::pair<Value, Value>>& dict_of(const Value& v, const char* op) const {
    if (v->kind != PyValue::Kind::Dict) error(op, " on ", describe(v), ", not a dict");
    return v->dict;
  }
  std::vector<Value>& list_of(const Value& v, const char* op) const {
    if (v->kind != PyValue::Kind::List) error(op, " on ", describe(v), ", not a list");
    return v->items;
  }
  static std::string describe(const Value& v) {
    static const char* names[] = {"None",    "a bool", "an int", "a float",  "a str",     "bytes",
                                  "a tuple", "a list", "a dict", "a global", "a storage", "a tensor"};
    std::string s = names[static_cast<int>(v->kind)];
    return v->kind == PyValue::Kind::Global ? s + " '" + v->s + "'" : s;
  }

  // torch.serialization's persistent_id: ('storage', storage class, key, location, numel). Every
  // mention of one storage carries the same key and becomes the same PyStorage.
  Value persistent_load(const Value& pid) {
    const auto& f = pid->items;
    if (pid->kind != PyValue::Kind::Tuple || f.size() != 5 || f[0]->kind != PyValue::Kind::String ||
        f[0]->s != "storage" || f[1]->kind != PyValue::Kind::Global || f[2]->kind != PyValue::Kind::String)
      error("persistent id is not ('storage', torch.<Type>Storage, key, location, numel)");
    auto& storage = storages_[f[2]->s];
    if (!storage) storage = std::make_shared<PyStorage>(PyStorage{f[1]->s, f[2]->s});
    if (storage->type != f[1]->s) error("storage '", f[2]->s, "' is both ", storage->type, " and ", f[1]->s);
    Value v = make(PyValue::Kind::Storage);
    v->storage = storage;
    return v;
  }

  // REDUCE: callable(*args) for the callables known_global lets through.
  Value call(const Value& callable, const Value& args) const {
    if (callable->kind != PyValue::Kind::Global) error("REDUCE on ", describe(callable), ", not a global");
    if (args->kind != PyValue::Kind::Tuple) error("REDUCE with ", describe(args), " as arguments, not a tuple");
    const std::string& name = callable->s;
    const auto& a = args->items;
    if (name == kOrderedDict) {
      if (!a.empty()) error(name, "() with arguments is not supported");
      return make(PyValue::Kind::Dict);
    }
    if (name == kRebuildParameter || name == kRebuildParameterWithState) {
      // (data, requires_grad, backward_hooks[, state]): the Parameter is its data here.
      if (a.empty() || a[0]->kind != PyValue::Kind::Tensor) error(name, " needs a tensor as its first argument");
      return a[0];
    }
    if (name == kRebuildTensor) return rebuild_tensor(a);
    error("cannot call ", name);
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
  // [, metadata]) in torch/_utils.py.
  Value rebuild_tensor(const std::vector<Value>& a) const {
    if (a.size() < 6 || a.size() > 7 || a[0]->kind != PyValue::Kind::Storage || a[1]->kind != PyValue::Kind::Int ||
        a[2]->kind != PyValue::Kind::Tuple || a[3]->kind != PyValue::Kind::Tuple)
      error(kRebuildTensor, " needs (storage, offset, size, stride, requires_grad, hooks[, metadata])");
    Value v = make(PyValue::Kind::Tensor);
    v->tensor.storage = a[0]->storage;
    v->tensor.offset = a[1]->i;
    for (const Value& d : a[2]->items) v->tensor.shape.push_back(d->kind == PyValue::Kind::Int ? d->i : -1);
    for (const Value& d : a[3]->items) v->tensor.strides.push_back(d->kind == PyValue::Kind::Int ? d->i : -1);
    const bool negative = v->tensor.offset < 0 ||
                          std::ranges::any_of(v->tensor.shape, [](int64_t d) { return d < 0; }) ||
                          std::ranges::any_of(v->tensor.strides, [](int64_t d) { return d < 0; });
    if (negative || v->tensor.shape.size() != v->tensor.strides.size())
      error(kRebuildTensor, ": offset ", v->tensor.offset, ", size ", shape_str(v->tensor.shape), " and stride ",
            shape_str(v->tensor.strides), " are not non-negative integers of one rank");
    return v;
  }

  std::string where_;
  std::string_view data_;
  size_t pos_ = 0;
  size_t op_at_ = 0;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  std::map<std::string, std::shared_ptr<PyStorage>> storages_;
};

// --- tensors -----------------------------------------------------------------------------------

// The element type each storage class holds (torch/storage.py); others are not bvllm dtypes.
std::optional<DType> storage_dtype(std::string_view type) {
  static const std::pair<std::string_view, DType> kTypes[] = {
      {"torch.FloatStorage", DType::F32},     {"torch.DoubleStorage", DType::F64}, {"torch.HalfStorage", DType::F16},
      {"torch.BFloat16Storage", DType::BF16}, {"torch.LongStorage", DType::I64},   {"torch.IntStorage", DType::I32},
      {"torch.ByteStorage", DType::U8},       {"torch.BoolStorage", DType::Bool},
  };
  for (const auto& [name, dtype] : kTypes) {
    if (name == type) return dtype;
  }
  return std::nullopt;
}

// Turns the pickled tensors into bvllm tensors, one bvllm Storage per storage key.
class TensorMaker {
 public:
  TensorMaker(const std::string& path, const ZipArchive& zip, std::string root, std::shared_ptr<const Mapping> mapping)
      : path_(path), zip_(zip), root_(std::move(root)), mapping_(std::move(mapping)) {}

  Tensor make(const std::string& name, const PyTensor& t) {
    const std::optional<DType> dtype = storage_dtype(t.storage->type);
    if (!dtype)
      fail(path_, "tensor '", name, "': storage type ", t.storage->type,
           " is not supported (bvllm reads Float, Double, Half, BFloat16, Long, Int, Byte and Bool storages)");
    const std::string entry_name = root_ + "/data/" + t.storage->key;
    const ZipEntry* entry = zip_.find(entry_name);
    if (!entry) fail(path_, "tensor '", name, "': its storage entry '", entry_name, "' is missing from the archive");
    // Elements the view reaches: offset + sum((size - 1) * stride) + 1, none when it is empty.
    const uint64_t elem = dtype_size(*dtype);
    uint64_t end = 0;
    if (numel(t.shape) > 0) {
      uint64_t last = static_cast<uint64_t>(t.offset);
      bool overflow = false;
      for (size_t d = 0; d < t.shape.size(); ++d) {
        uint64_t step = 0;
        overflow |=
            __builtin_mul_overflow(static_cast<uint64_t>(t.shape[d] - 1), static_cast<uint64_t>(t.strides[d]), &step);
        overflow |= __builtin_add_overflow(last, step, &last);
      }
      overflow |= __builtin_mul_overflow(last + 1, elem, &end);
      if (overflow) fail(path_, "tensor '", name, "': size ", shape_str(t.shape), " and stride overflow 64 bits");
    }
    if (entry->size < end)
      fail(path_, "tensor '", name, "' (", dtype_name(*dtype), " ", shape_str(t.shape), ", stride ",
           shape_str(t.strides), ", offset ", t.offset, ") needs ", end, " bytes of storage '", entry_name,
           "', which holds ", entry->size);
    return Tensor::from_storage(storage(*entry, *dtype), *dtype, t.shape, t.strides, t.offset);
  }

 private:
  // The entry's bytes as a Storage: a view of the mapping when aligned for the dtype (a C++ bool
  // must also hold 0 or 1), else an aligned copy. Made once per entry, so views share it.
  std::shared_ptr<Storage> storage(const ZipEntry& entry, DType dtype) {
    auto& cached = storages_[entry.name];
    if (cached) return cached;
    std::string_view bytes = zip_.data(entry);
    char* src = const_cast<char*>(bytes.data());  // the mapping is private and writable
    const bool aligned = reinterpret_cast<uintptr_t>(src) % dtype_size(dtype) == 0;
    const bool clean = dtype != DType::Bool || std::ranges::all_of(bytes, [](char c) { return c == 0 || c == 1; });
    if (aligned && clean) {
      cached = std::make_shared<Storage>(src, bytes.size(), Device::cpu(),
                                         [keep = mapping_](void*) { static_cast<void>(keep); });
    } else {
      cached = Storage::allocate(bytes.size(), Device::cpu());
      auto* dst = static_cast<unsigned char*>(cached->data());
      if (!bytes.empty()) std::memcpy(dst, src, bytes.size());
      if (!clean) std::transform(dst, dst + bytes.size(), dst, [](unsigned char c) { return c != 0; });
    }
    return cached;
  }

  const std::string& path_;
  const ZipArchive& zip_;
  std::string root_;
  std::shared_ptr<const Mapping> mapping_;
  std::unordered_map<std::string, std::shared_ptr<Storage>> storages_;
};

// Depth-first over the unpickled object, naming tensors by their dotted path.
void flatten(const Value& v, const std::string& name, TensorMaker& maker, NamedTensors& out,
             std::unordered_set<std::string>& seen, const std::string& path) {
  auto child = [&](const std::string& key) { return name.empty() ? key : name + "." + key; };
  switch (v->kind) {
    case PyValue::Kind::Tensor:
      if (!seen.insert(name).second) fail(path, "two tensors are both named '", name, "' once nested keys are joined");
      out.emplace_back(name, maker.make(name, v->tensor));
      break;
    case PyValue::Kind::Dict:
      for (const auto& [key, value] : v->dict) {
        if (key->kind == PyValue::Kind::String) {
          flatten(value, child(key->s), maker, out, seen, path);
        } else if (key->kind == PyValue::Kind::Int) {
          flatten(value, child(std::to_string(key->i)), maker, out, seen, path);
        } else {
          fail(path, "dict '", name, "' has a key that is neither a string nor an integer");
        }
      }
      break;
    case PyValue::Kind::List:
    case PyValue::Kind::Tuple:
      for (size_t k = 0; k < v->items.size(); ++k)
        flatten(v->items[k], child(std::to_string(k)), maker, out, seen, path);
      break;
    default: break;  // numbers, strings, None, ...
  }
}

// The first bytes of a legacy torch.save file: PROTO 2, then LONG1 of 10 bytes holding
// torch.serialization's MAGIC_NUMBER 0x1950a86a20f9469cfc6c.
constexpr std::string_view kLegacyMagic = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

}  // namespace

NamedTensors load_pth(const std::string& path) {
  std::shared_ptr<const Mapping> mapping = map_file(path);
  const std::string_view head(mapping->bytes(), std::min<size_t>(mapping->size, kLegacyMagic.size()));
  if (head.starts_with('\x80'))
    fail(path,
         head == kLegacyMagic ? "legacy torch.save file (pre-1.6 format, a pickle stream starting with the "
                                "magic number 0x1950a86a20f9469cfc6c)"
                              : "a bare pickle, not a torch.save zip archive",
         ": bvllm reads only the zip format that torch.save writes by default since PyTorch 1.6. Convert it "
         "with a recent PyTorch: torch.save(torch.load(path, map_location='cpu'), new_path)");
  ZipArchive zip(path, mapping);
  if (zip.entries().empty()) fail(path, "the zip archive is empty (no data.pkl)");

  // As torch's PyTorchStreamReader: the folder of the first entry is the archive's root
  // ("archive" or the stem of the file name it was first saved as).
  const std::string& first = zip.entries().front().name;
  if (first.find('/') == std::string::npos)
    fail(path, "zip entry '", first, "' is not inside a folder: torch.save archives hold <root>/data.pkl");
  const std::string root = first.substr(0, first.find('/'));
  if (zip.find(root + "/constants.pkl"))
    fail(path,
         "this is a TorchScript archive (torch.jit.save): load it with torch.jit.load and torch.save its "
         "state_dict()");
  const ZipEntry* pkl = zip.find(root + "/data.pkl");
  if (!pkl) fail(path, "no '", root, "/data.pkl' in the zip archive: not a torch.save file");
  if (const ZipEntry* order = zip.find(root + "/byteorder"); order && zip.data(*order) != "little")
    fail(path, "storages are saved ", zip.data(*order), "-endian; bvllm reads little-endian ones");

  Value root_value = Unpickler(str_cat(path, ": ", pkl->name), zip.data(*pkl)).run();
  TensorMaker maker(path, zip, root, mapping);
  NamedTensors out;
  std::unordered_set<std::string> seen;
  flatten(root_value, "", maker, out, seen, path);
  return out;
}

}  // namespace bvllm
