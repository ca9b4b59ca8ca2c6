// load_pth against files that torch.save (PyTorch 1.13) wrote: every dtype, a module's state dict,
// a LAVIS-style nested checkpoint, shared storages and views, nn.Parameters, pickle protocol 4,
// long memos, a ZIP64 archive with unaligned data, and one test per broken file. The fixtures and
// their expected values (fixtures/pth/expected.safetensors) come from
// tests/reference/make_pth_fixtures.py.
#include "runtime/io/pth.h"

#include <gtest/gtest.h>
#include <unistd.h>  // defines: getpid

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "tests/support/messages.h"

namespace bvllm {
namespace {

namespace fs = std::filesystem;

std::string fixture(const std::string& name) {
  return std::string(BVLLM_SOURCE_DIR) + "/tests/reference/fixtures/pth/" + name;
}

// The logical bytes of a tensor (row-major), whatever its strides.
std::string tensor_bytes(const Tensor& t) {
  Tensor c = t.contiguous();
  std::string s(c.nbytes(), '\0');
  if (!s.empty()) std::memcpy(s.data(), c.raw_data(), s.size());
  return s;
}

std::map<std::string, Tensor> by_name(const NamedTensors& tensors) {
  std::map<std::string, Tensor> out;
  for (const auto& [name, t] : tensors) EXPECT_TRUE(out.emplace(name, t).second) << "duplicate name " << name;
  return out;
}

// Loads fixtures/pth/<stem>.pth and checks it holds exactly the tensors that the script recorded
// as "<stem>.<name>" in expected.safetensors: same names, dtypes, shapes and bytes, each element
// aligned for its dtype. Returns the tensors by name.
std::map<std::string, Tensor> load_and_compare(const std::string& stem) {
  NamedTensors loaded = load_pth(fixture(stem + ".pth"));
  std::map<std::string, Tensor> got = by_name(loaded);
  SafetensorsFile expected = SafetensorsFile::open(fixture("expected.safetensors"));
  std::set<std::string> want;
  for (const std::string& key : expected.names()) {
    if (key.starts_with(stem + ".")) want.insert(key.substr(stem.size() + 1));
  }
  EXPECT_FALSE(want.empty()) << "no expected values for " << stem << " (regenerate the fixtures)";
  std::set<std::string> have;
  for (const auto& [name, t] : got) have.insert(name);
  EXPECT_EQ(have, want) << stem;
  for (const std::string& name : want) {
    if (!got.count(name)) continue;
    SCOPED_TRACE(stem + ": " + name);
    const Tensor& t = got.at(name);
    Tensor e = expected.tensor(stem + "." + name);
    EXPECT_TRUE(t.device().is_cpu());
    EXPECT_EQ(t.dtype(), e.dtype());
    EXPECT_EQ(t.shape(), e.shape());
    EXPECT_EQ(tensor_bytes(t), tensor_bytes(e));
    if (t.numel() > 0) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % dtype_size(t.dtype()), 0u);
    }
  }
  return got;
}

std::string load_error(const std::string& path) {
  try {
    load_pth(path);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "loading " << path << " did not fail";
  return "";
}

// --- files torch.save wrote ------------------------------------------------------------------

TEST(Pth, ReadsEveryDtypeWithEmptyAndZeroDimTensors) {
  auto t = load_and_compare("dtypes");
  ASSERT_EQ(t.size(), 10u);
  EXPECT_EQ(t.at("f32").dtype(), DType::F32);
  EXPECT_EQ(t.at("f16").dtype(), DType::F16);
  EXPECT_EQ(t.at("bf16").dtype(), DType::BF16);
  EXPECT_EQ(t.at("f64").dtype(), DType::F64);
  EXPECT_EQ(t.at("i64").dtype(), DType::I64);
  EXPECT_EQ(t.at("bool").dtype(), DType::Bool);
  EXPECT_EQ(t.at("scalar").dim(), 0);
  EXPECT_EQ(t.at("empty").shape(), (Shape{0, 3}));
  EXPECT_TRUE(t.at("f32").is_contiguous());
}

TEST(Pth, ModuleStateDictKeepsItsOrderAndSkipsMetadata) {
  // Saved through a buffer, so the archive root is "archive/" rather than the file stem.
  auto t = load_and_compare("module");
  NamedTensors loaded = load_pth(fixture("module.pth"));
  std::vector<std::string> names;
  for (const auto& [name, tensor] : loaded) names.push_back(name);
  // Module.state_dict order: the module's own parameters and buffers, then each child's.
  EXPECT_EQ(names, (std::vector<std::string>{"steps", "linear.weight", "linear.bias", "norm.weight", "norm.bias"}));
  EXPECT_EQ(t.at("linear.weight").shape(), (Shape{3, 4}));
  EXPECT_EQ(t.at("steps").dtype(), DType::I64);
}

TEST(Pth, NestedCheckpointIsFlattenedWithDots) {
  // {'model': OrderedDict, 'optimizer': {'state': {0: {...}}, ...}, 'epoch': 3, 'config': {...},
  //  'pair': (tensor, str)}: only tensors come out, named by their path.
  auto t = load_and_compare("checkpoint");
  EXPECT_TRUE(t.count("model.Qformer.bert.encoder.layer.0.attention.self.query.weight"));
  EXPECT_TRUE(t.count("model.query_tokens"));
  EXPECT_EQ(t.at("model.ln_vision.weight").dtype(), DType::F16);
  EXPECT_TRUE(t.count("optimizer.state.0.exp_avg"));  // an integer key
  EXPECT_TRUE(t.count("pair.0"));                     // a tuple element
  EXPECT_FALSE(t.count("epoch"));
  EXPECT_FALSE(t.count("config.lr"));
}

TEST(Pth, SharedStorageComesOutAsViewsOfOneStorage) {
  auto t = load_and_compare("shared");
  const Tensor& base = t.at("base");
  for (const char* name : {"view", "transposed", "slice", "row"}) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(t.at(name).shares_storage(base));
  }
  EXPECT_EQ(t.at("view").shape(), (Shape{6, 4}));
  EXPECT_EQ(t.at("transposed").strides(), (Shape{1, 6}));
  EXPECT_FALSE(t.at("transposed").is_contiguous());
  EXPECT_EQ(t.at("slice").offset(), 8);
  EXPECT_EQ(t.at("slice").strides(), (Shape{6, 1}));
  EXPECT_EQ(t.at("row").offset(), 12);
  // Only a 2-element slice of a 100-element tensor was saved: torch writes the whole storage.
  EXPECT_EQ(t.at("tail").offset(), 10);
  EXPECT_EQ(t.at("tail").storage()->nbytes(), 100 * sizeof(float));
  EXPECT_FALSE(t.at("tail").shares_storage(base));
}

TEST(Pth, ParametersLoadAsTheirData) { load_and_compare("parameters"); }

TEST(Pth, LongMemoAndProtocol4) {
  auto t = load_and_compare("long_memo");  // LONG_BINPUT / LONG_BINGET past 256 memo entries
  EXPECT_TRUE(t.at("alias").shares_storage(t.at("row79")));
  EXPECT_EQ(t.at("alias").offset(), 79 * 2);
  load_and_compare("protocol4");  // FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL
}

TEST(Pth, Zip64RecordsAndUnalignedDataAreRead) {
  // Every size and offset of zip64.pth is in ZIP64 records and every entry's data starts at an
  // odd file offset, so the reader must take the zip64 path and copy (load_and_compare checks
  // that each tensor is aligned for its dtype).
  auto t = load_and_compare("zip64");
  EXPECT_TRUE(t.at("view").shares_storage(t.at("f32")));
  EXPECT_EQ(t.at("view").offset(), 1);
}

TEST(Pth, WritingALoadedTensorLeavesTheFileUnchanged) {
  Tensor first = by_name(load_pth(fixture("dtypes.pth"))).at("f32");
  const std::string before = tensor_bytes(first);
  first.fill_(7.0);
  EXPECT_EQ(first.to_vector<float>()[0], 7.0f);
  EXPECT_EQ(tensor_bytes(by_name(load_pth(fixture("dtypes.pth"))).at("f32")), before);
}

// --- broken files ----------------------------------------------------------------------------

TEST(Pth, LegacyFileSaysHowToConvertIt) {
  std::string msg = load_error(fixture("legacy.pth"));
  EXPECT_CONTAINS(msg, "legacy.pth");
  EXPECT_CONTAINS(msg, "legacy torch.save file (pre-1.6");
  EXPECT_CONTAINS(msg, "torch.save(torch.load(");
}

TEST(Pth, UnsupportedOpcodeIsNamedWithItsOffset) {
  std::string msg = load_error(fixture("bad_opcode.pth"));
  EXPECT_CONTAINS(msg, "archive/data.pkl");
  EXPECT_CONTAINS(msg, "unsupported pickle opcode 0x82 at offset 2");
}

TEST(Pth, TruncatedArchive) {
  std::string msg = load_error(fixture("truncated.pth"));
  EXPECT_CONTAINS(msg, "truncated.pth");
  EXPECT_CONTAINS(msg, "file is truncated");
}

TEST(Pth, CompressedEntryIsRefused) {
  std::string msg = load_error(fixture("compressed.pth"));
  EXPECT_CONTAINS(msg, "'archive/data.pkl' is compressed (method 8");
}

TEST(Pth, MissingDataPkl) { EXPECT_CONTAINS(load_error(fixture("no_data_pkl.pth")), "no 'archive/data.pkl'"); }

TEST(Pth, MissingOrShortStorageNamesTheTensor) {
  std::string missing = load_error(fixture("missing_storage.pth"));
  EXPECT_CONTAINS(missing, "tensor 'w'");
  EXPECT_CONTAINS(missing, "'archive/data/0' is missing");
  std::string shorter = load_error(fixture("short_storage.pth"));
  EXPECT_CONTAINS(shorter, "tensor 'w'");
  EXPECT_CONTAINS(shorter, "needs 16 bytes of storage 'archive/data/0', which holds 12");
}

TEST(Pth, UnsupportedGlobalAndDtypeAreNamed) {
  EXPECT_CONTAINS(load_error(fixture("unsupported_global.pth")), "unsupported global 'argparse.Namespace'");
  std::string dtype = load_error(fixture("unsupported_dtype.pth"));
  EXPECT_CONTAINS(dtype, "tensor 's'");
  EXPECT_CONTAINS(dtype, "torch.ShortStorage is not supported");
}

TEST(Pth, NotAZipNotAFileAndEmpty) {
  const fs::path dir = fs::path(::testing::TempDir()) / str_cat("bvllm_pth_", ::getpid());
  fs::create_directories(dir);
  const std::string text = (dir / "text.pth").string(), empty = (dir / "empty.pth").string();
  std::ofstream(text) << "this is not a checkpoint, it is just some text long enough for a zip end record\n";
  std::ofstream{empty};
  EXPECT_CONTAINS(load_error(text), "not a zip archive");
  EXPECT_CONTAINS(load_error(empty), "empty");
  EXPECT_CONTAINS(load_error((dir / "absent.pth").string()), "cannot open");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace bvllm
