// Checkpoint directories: round trips of f32/bf16/i64 tensors and texts, the manifest against the
// files, latest and keep_last, leftovers and damaged steps (a step without manifest, a truncated
// or replaced safetensors, a bad latest pointer), load errors that name the file and the tensor or
// field, overwriting a step, and a saver killed at random moments (SIGKILL) that never leaves
// `latest` naming anything but a complete checkpoint of the right contents. Then saves by many
// writers (simulated ranks in one process, and forked processes): ZeRO-like flat slices back
// bitwise, re-partitioned to another dp by assemble_flat_range, a crash before the commit, clashing
// or stray files, slices that do not fit their global shape, and version-1 manifests.
#include "parallel/checkpoint.h"

#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>
#include <signal.h>    // defines: kill, SIGKILL
#include <sys/wait.h>  // defines: waitpid
#include <unistd.h>    // defines: fork, getpid, _exit

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "tests/support/messages.h"

namespace bvllm::parallel {
namespace {

using testing::has;

namespace fs = std::filesystem;
using testing::error_of;

// Whether `text` contains `part`, printing both when it does not.
class CheckpointDir : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / str_cat("bvllm_checkpoint_", ::getpid(), "_", info->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }
  std::string step_path(int64_t step) const { return (dir_ / checkpoint_dir_name(step)).string(); }

  fs::path dir_;
};

std::string read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// The logical bytes of a tensor (row-major), whatever its strides.
std::string tensor_bytes(const Tensor& t) {
  Tensor c = t.contiguous();
  std::string s(c.nbytes(), '\0');
  if (!s.empty()) std::memcpy(s.data(), c.raw_data(), s.size());
  return s;
}

// The same names in the same order, each a CPU tensor with the expected dtype, shape and bytes.
void expect_same_tensors(const NamedTensors& got, const NamedTensors& expected) {
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE(expected[i].first);
    EXPECT_EQ(got[i].first, expected[i].first);
    EXPECT_EQ(got[i].second.dtype(), expected[i].second.dtype());
    EXPECT_EQ(got[i].second.shape(), expected[i].second.shape());
    EXPECT_TRUE(got[i].second.device().is_cpu());
    EXPECT_EQ(tensor_bytes(got[i].second), tensor_bytes(expected[i].second));
  }
}

// The entries of `dir` whose names start with `prefix`.
std::vector<std::string> entries_with_prefix(const fs::path& dir, const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::string name = entry.path().filename().string();
    if (name.starts_with(prefix)) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A checkpoint whose every value depends on `step`, so a load can tell which step it read.
Checkpoint make_checkpoint(int64_t step, int64_t n = 6) {
  std::vector<float> w(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) w[i] = static_cast<float>(step) + 0.25f * static_cast<float>(i);
  Checkpoint c;
  c.step = step;
  c.tensors["model"] = {{"w", Tensor::from<float>(w)}, {"b", Tensor::from<float>({static_cast<float>(-step)})}};
  c.tensors["optimizer"] = {{"step", Tensor::from<int64_t>({step})}};
  c.texts["trainer.json"] = str_cat("{\"step\": ", step, "}");
  return c;
}

float first_weight(const Checkpoint& c) { return c.tensors.at("model").at(0).second.to_vector<float>().at(0); }

// Rewrites manifest.pb of `step_dir` after `edit` changed it.
template <typename F>
void edit_manifest(const std::string& step_dir, F&& edit) {
  CheckpointManifest manifest = read_checkpoint_manifest(step_dir);
  edit(manifest);
  std::string text;
  ASSERT_TRUE(google::protobuf::TextFormat::PrintToString(manifest, &text));
  write_raw((fs::path(step_dir) / "manifest.pb").string(), text);
}

// Sets the manifest's recorded size of `name` to the file's size now (after a test replaced it).
void resync_size(const std::string& step_dir, const std::string& name) {
  edit_manifest(step_dir, [&](CheckpointManifest& m) {
    for (CheckpointFile& f : *m.mutable_files()) {
      if (f.name() == name) f.set_bytes(fs::file_size(fs::path(step_dir) / name));
    }
  });
}

// --- round trips -----------------------------------------------------------------------------

TEST_F(CheckpointDir, RoundTripsF32Bf16I64TensorsAndTexts) {
  Checkpoint c;
  c.step = 7;
  NamedTensors model = {
      // Caller's order, not sorted: the load must give it back.
      {"layers.0.weight", Tensor::from<float>({1.5f, -2.25f, 3.0f, 1e-30f, -0.0f, 7.0f}, {2, 3})},
      {"embed", Tensor::from<float>({0.1f, 0.2f, 0.3f, 0.4f}, {2, 2}).to(DType::BF16)},
      {"a.scalar", Tensor::scalar<float>(42.0f)},
      {"empty", Tensor::empty({0, 3}, DType::F32)},
      {"transposed", Tensor::from<float>({0, 1, 2, 3, 4, 5}, {2, 3}).transpose(0, 1)},
  };
  NamedTensors optimizer = {
      {"exp_avg.embed", Tensor::from<float>({-1.0f, 2.0f, 0.5f, 1e-8f}, {2, 2})},
      {"step", Tensor::from<int64_t>({int64_t{1} << 40, -3})},
  };
  c.tensors["model"] = model;
  c.tensors["optimizer"] = optimizer;
  c.texts["trainer.json"] = R"({"step": 7, "rng": [1, 2, 3]})";
  c.texts["recipe.pb"] = "name: \"tiny\"\n";
  c.texts["binary.bin"] = std::string("a\0b\xff\n", 5);
  c.texts["empty.txt"] = "";

  const std::string path = save_checkpoint(dir(), c);
  EXPECT_EQ(path, step_path(7));
  EXPECT_EQ(fs::path(path).filename().string(), "step-00000007");
  EXPECT_EQ(read_raw((dir_ / "latest").string()), "step-00000007\n");

  // Loaded from the step directory and from the checkpoint directory alike.
  for (const std::string& from : {path, dir()}) {
    SCOPED_TRACE(from);
    Checkpoint back = load_checkpoint(from);
    EXPECT_EQ(back.step, 7);
    EXPECT_EQ(back.texts, c.texts);
    ASSERT_EQ(back.tensors.size(), 2u);
    for (const auto& [stem, expected] : c.tensors) {
      SCOPED_TRACE(stem);
      const NamedTensors& got = back.tensors.at(stem);
      expect_same_tensors(got, expected);
    }
    EXPECT_EQ(back.tensors.at("model").at(4).second.to_vector<float>(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
    EXPECT_EQ(back.tensors.at("optimizer").at(1).second.to_vector<int64_t>(),
              (std::vector<int64_t>{int64_t{1} << 40, -3}));
  }

  // The files are what they claim to be: plain safetensors and the texts' bytes.
  auto st = load_safetensors(path + "/model.safetensors");
  EXPECT_EQ(st.size(), model.size());
  EXPECT_EQ(st.at("embed").dtype(), DType::BF16);
  EXPECT_EQ(read_raw(path + "/binary.bin"), c.texts["binary.bin"]);
  EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
}

TEST_F(CheckpointDir, ManifestListsEveryFileWithItsSizeAndEveryTensorWhole) {
  save_checkpoint(dir(), make_checkpoint(3));
  const std::string step_dir = step_path(3);
  CheckpointManifest m = read_checkpoint_manifest(step_dir);
  EXPECT_EQ(m.format_version(), 1);  // whole tensors only: what version-1 readers load
  EXPECT_EQ(m.step(), 3);

  std::set<std::string> names;
  for (const CheckpointFile& f : m.files()) {
    names.insert(f.name());
    EXPECT_EQ(f.bytes(), fs::file_size(fs::path(step_dir) / f.name())) << f.name();
    EXPECT_EQ(f.kind(), f.name().ends_with(".safetensors") ? CheckpointFile::TENSORS : CheckpointFile::TEXT);
  }
  // Exactly the directory's files besides the manifest itself.
  std::set<std::string> on_disk;
  for (const auto& entry : fs::directory_iterator(step_dir)) on_disk.insert(entry.path().filename().string());
  on_disk.erase("manifest.pb");
  EXPECT_EQ(names, on_disk);
  EXPECT_EQ(names, (std::set<std::string>{"model.safetensors", "optimizer.safetensors", "trainer.json"}));

  ASSERT_EQ(m.tensors_size(), 3);
  const CheckpointTensor& w = m.tensors(0);
  EXPECT_EQ(w.name(), "w");
  EXPECT_EQ(w.file(), "model.safetensors");
  EXPECT_EQ(w.dtype(), "F32");
  EXPECT_EQ(std::vector<int64_t>(w.shape().begin(), w.shape().end()), (std::vector<int64_t>{6}));
  EXPECT_EQ(std::vector<int64_t>(w.slice_start().begin(), w.slice_start().end()), (std::vector<int64_t>{0}));
  EXPECT_EQ(std::vector<int64_t>(w.slice_size().begin(), w.slice_size().end()), (std::vector<int64_t>{6}));
  EXPECT_EQ(m.tensors(2).file(), "optimizer.safetensors");
  EXPECT_EQ(m.tensors(2).dtype(), "I64");
}

TEST_F(CheckpointDir, EmptyCheckpointAndLargeStepNumbers) {
  Checkpoint c;
  c.step = 123456789;  // more than 8 digits: the name grows, the order stays numeric
  save_checkpoint(dir(), c);
  save_checkpoint(dir(), make_checkpoint(99999999));
  EXPECT_TRUE(fs::is_directory(dir_ / "step-123456789"));
  // `latest` names the last save, even though it has the lower step.
  EXPECT_EQ(latest_checkpoint(dir()), step_path(99999999));
  fs::remove(dir_ / "latest");
  EXPECT_EQ(latest_checkpoint(dir()), step_path(123456789));  // without it: the highest step
  Checkpoint back = load_checkpoint(step_path(123456789));
  EXPECT_EQ(back.step, 123456789);
  EXPECT_TRUE(back.tensors.empty());
  EXPECT_TRUE(back.texts.empty());
}

// --- latest and keep_last ----------------------------------------------------------------------

TEST_F(CheckpointDir, LatestIsTheLastOfThreeSaves) {
  EXPECT_EQ(latest_checkpoint(dir()), std::nullopt);  // no directory yet
  for (int64_t step : {10, 20, 30}) {
    save_checkpoint(dir(), make_checkpoint(step));
    EXPECT_EQ(latest_checkpoint(dir()), step_path(step));
  }
  EXPECT_EQ(list_checkpoints(dir()), (std::vector<std::string>{step_path(10), step_path(20), step_path(30)}));
  Checkpoint back = load_checkpoint(dir());
  EXPECT_EQ(back.step, 30);
  EXPECT_EQ(first_weight(back), 30.0f);
  EXPECT_EQ(back.texts.at("trainer.json"), "{\"step\": 30}");
  EXPECT_EQ(first_weight(load_checkpoint(step_path(20))), 20.0f);
}

TEST_F(CheckpointDir, KeepLastDeletesTheOldestAfterLatestMoved) {
  for (int64_t step = 1; step <= 5; ++step) save_checkpoint(dir(), make_checkpoint(step), {.keep_last = 2});
  EXPECT_EQ(entries_with_prefix(dir_, "step-"), (std::vector<std::string>{"step-00000004", "step-00000005"}));
  EXPECT_EQ(latest_checkpoint(dir()), step_path(5));

  // A run resumed from an earlier step: directories of higher steps are not the new run's to
  // delete, and `latest` names the new save although step 10 is higher.
  save_checkpoint(dir(), make_checkpoint(10), {.keep_last = 2});
  EXPECT_EQ(entries_with_prefix(dir_, "step-"), (std::vector<std::string>{"step-00000005", "step-00000010"}));
  save_checkpoint(dir(), make_checkpoint(6), {.keep_last = 2});
  EXPECT_EQ(entries_with_prefix(dir_, "step-"),
            (std::vector<std::string>{"step-00000005", "step-00000006", "step-00000010"}));
  EXPECT_EQ(latest_checkpoint(dir()), step_path(6));
  EXPECT_EQ(load_checkpoint(dir()).step, 6);

  // keep_last 1 keeps only the new one among lower steps; 0 keeps everything.
  save_checkpoint(dir(), make_checkpoint(7), {.keep_last = 0});
  EXPECT_EQ(entries_with_prefix(dir_, "step-").size(), 4u);
  save_checkpoint(dir(), make_checkpoint(8), {.keep_last = 1});
  EXPECT_EQ(entries_with_prefix(dir_, "step-"), (std::vector<std::string>{"step-00000008", "step-00000010"}));
}

// --- interrupted saves and damage ----------------------------------------------------------------

TEST_F(CheckpointDir, LeftoverTmpDirectoryIsIgnoredThenRemovedByTheNextSave) {
  save_checkpoint(dir(), make_checkpoint(1));
  // What a save killed while writing step 2 leaves: a .tmp- directory, even with a manifest.
  const fs::path tmp = dir_ / ".tmp-step-00000002-999999";
  fs::copy(step_path(1), tmp);
  write_raw((dir_ / ".tmp-latest-999999").string(), "step-00000002\n");
  EXPECT_EQ(latest_checkpoint(dir()), step_path(1));
  EXPECT_EQ(list_checkpoints(dir()), std::vector<std::string>{step_path(1)});
  EXPECT_EQ(load_checkpoint(dir()).step, 1);

  save_checkpoint(dir(), make_checkpoint(2));
  EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
  EXPECT_EQ(load_checkpoint(dir()).step, 2);
}

TEST_F(CheckpointDir, StepWithoutManifestIsSkippedAndItsLoadSaysSo) {
  save_checkpoint(dir(), make_checkpoint(1));
  save_checkpoint(dir(), make_checkpoint(2));
  // A step directory that is not complete (no manifest.pb), newer than the last good one, and a
  // `latest` that even names it (as a hand-edited or foreign directory might).
  fs::copy(step_path(2), step_path(3));
  fs::remove(fs::path(step_path(3)) / "manifest.pb");
  EXPECT_EQ(latest_checkpoint(dir()), step_path(2));
  write_raw((dir_ / "latest").string(), "step-00000003\n");
  EXPECT_EQ(latest_checkpoint(dir()), step_path(2));
  EXPECT_EQ(load_checkpoint(dir()).step, 2);
  EXPECT_EQ(list_checkpoints(dir()), (std::vector<std::string>{step_path(1), step_path(2)}));

  std::string e = error_of([&] { load_checkpoint(step_path(3)); });
  EXPECT_TRUE(has(e, step_path(3) + "/manifest.pb"));
  EXPECT_TRUE(has(e, "missing"));
}

TEST_F(CheckpointDir, TruncatedSafetensorsFallsBackToThePreviousStepAndNamesTheFile) {
  save_checkpoint(dir(), make_checkpoint(1));
  save_checkpoint(dir(), make_checkpoint(2));
  const std::string file = step_path(2) + "/model.safetensors";
  fs::resize_file(file, fs::file_size(file) - 4);
  EXPECT_EQ(latest_checkpoint(dir()), step_path(1));
  EXPECT_EQ(first_weight(load_checkpoint(dir())), 1.0f);

  std::string e = error_of([&] { load_checkpoint(step_path(2)); });
  EXPECT_TRUE(has(e, file));
  EXPECT_TRUE(has(e, "truncated"));
  EXPECT_TRUE(has(e, "bytes"));

  // Damage in every step: loading the directory says which file of the newest is wrong.
  fs::remove(step_path(1) + "/trainer.json");
  EXPECT_EQ(latest_checkpoint(dir()), std::nullopt);
  e = error_of([&] { load_checkpoint(dir()); });
  EXPECT_TRUE(has(e, "no complete checkpoint"));
  EXPECT_TRUE(has(e, file));
}

TEST_F(CheckpointDir, BadLatestPointerFallsBackToTheHighestCompleteStep) {
  save_checkpoint(dir(), make_checkpoint(4));
  save_checkpoint(dir(), make_checkpoint(5));
  for (const char* text : {"", "step-00000009\n", "../step-00000004\n", "garbage"}) {
    SCOPED_TRACE(text);
    write_raw((dir_ / "latest").string(), text);
    EXPECT_EQ(latest_checkpoint(dir()), step_path(5));
  }
}

// --- load errors name the file and the tensor or field -------------------------------------------

TEST_F(CheckpointDir, MissingAndResizedFilesAreNamed) {
  save_checkpoint(dir(), make_checkpoint(1));
  const std::string step_dir = step_path(1);
  fs::remove(step_dir + "/optimizer.safetensors");
  std::string e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, step_dir + "/optimizer.safetensors"));
  EXPECT_TRUE(has(e, "missing"));

  save_checkpoint(dir(), make_checkpoint(1));  // whole again
  write_raw(step_dir + "/trainer.json", "{\"step\": 1, \"more\": true}");
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, step_dir + "/trainer.json"));
  EXPECT_TRUE(has(e, "overwritten"));
}

TEST_F(CheckpointDir, TensorMissingExtraMisShapedOrRetypedIsNamed) {
  struct Case {
    const char* what;
    NamedTensors file;  // what model.safetensors holds instead of {w [6] F32, b [1] F32}
    std::vector<std::string> expect;
  };
  const Tensor b = Tensor::from<float>({-1.0f});
  const Tensor w = Tensor::from<float>({1, 2, 3, 4, 5, 6});
  const std::vector<Case> cases = {
      {"missing", {{"b", b}}, {"tensor 'w' missing"}},
      {"extra", {{"w", w}, {"b", b}, {"stray", b}}, {"tensor 'stray' is not in manifest.pb"}},
      {"renamed", {{"v", w}, {"b", b}}, {"tensor 'w' missing"}},
      {"mis-shaped", {{"w", w.reshape({2, 3})}, {"b", b}}, {"tensor 'w'", "[2, 3]", "[6]"}},
      {"retyped", {{"w", w.to(DType::BF16)}, {"b", b}}, {"tensor 'w'", "BF16", "F32"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    save_checkpoint(dir(), make_checkpoint(1));
    const std::string step_dir = step_path(1);
    const std::string file = step_dir + "/model.safetensors";
    save_safetensors(file, c.file);
    resync_size(step_dir, "model.safetensors");  // so that the size check passes
    std::string e = error_of([&] { load_checkpoint(step_dir); });
    EXPECT_TRUE(has(e, file));
    for (const std::string& part : c.expect) EXPECT_TRUE(has(e, part));
  }
}

TEST_F(CheckpointDir, ManifestErrorsNameTheFieldOrPosition) {
  save_checkpoint(dir(), make_checkpoint(2));
  const std::string step_dir = step_path(2);
  const std::string manifest = step_dir + "/manifest.pb";
  const std::string good = read_raw(manifest);

  write_raw(manifest, good + "\nbogus_field: 1\n");
  std::string e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, manifest + ":"));
  EXPECT_TRUE(has(e, "bogus_field"));

  write_raw(manifest, good);
  edit_manifest(step_dir, [](CheckpointManifest& m) { m.set_format_version(3); });
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, manifest));
  EXPECT_TRUE(has(e, "format_version is 3, expected 1 to 2"));
  write_raw(manifest, good);
  edit_manifest(step_dir, [](CheckpointManifest& m) { m.set_format_version(0); });
  EXPECT_TRUE(has(error_of([&] { load_checkpoint(step_dir); }), "format_version is 0"));

  write_raw(manifest, good);
  edit_manifest(step_dir, [](CheckpointManifest& m) { m.set_step(3); });
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, manifest));
  EXPECT_TRUE(has(e, "step-00000002"));

  write_raw(manifest, good);
  edit_manifest(step_dir, [](CheckpointManifest& m) { m.mutable_tensors(0)->set_file("nowhere.safetensors"); });
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, "tensors.file 'nowhere.safetensors'"));

  write_raw(manifest, good);
  edit_manifest(step_dir, [](CheckpointManifest& m) { m.mutable_files(0)->set_name("../escape.safetensors"); });
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, "files.name '../escape.safetensors'"));

  write_raw(manifest, good);
  edit_manifest(step_dir, [](CheckpointManifest& m) { m.mutable_tensors(0)->set_slice_size(0, 3); });
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, "tensor 'w' is a slice"));

  write_raw(manifest, good);
  EXPECT_EQ(load_checkpoint(step_dir).step, 2);

  e = error_of([&] { load_checkpoint(dir() + "/nope"); });
  EXPECT_TRUE(has(e, dir() + "/nope"));
  fs::create_directories(dir_ / "empty");
  e = error_of([&] { load_checkpoint(dir() + "/empty"); });
  EXPECT_TRUE(has(e, "no checkpoint here"));
}

// --- overwriting and refusing ------------------------------------------------------------------------

TEST_F(CheckpointDir, OverwritingAStepReplacesItWhole) {
  save_checkpoint(dir(), make_checkpoint(5, 1000));
  Checkpoint before = load_checkpoint(dir());  // holds views of the files about to be replaced

  Checkpoint c;
  c.step = 5;
  c.tensors["model"] = {{"w", Tensor::from<float>({-9.0f})}};
  c.texts["notes.txt"] = "second";
  EXPECT_EQ(save_checkpoint(dir(), c), step_path(5));

  Checkpoint after = load_checkpoint(dir());
  EXPECT_EQ(after.step, 5);
  EXPECT_EQ(after.tensors.size(), 1u);  // no optimizer left over from the first save
  EXPECT_EQ(first_weight(after), -9.0f);
  EXPECT_EQ(after.texts, c.texts);
  EXPECT_EQ(entries_with_prefix(step_path(5), ""),
            (std::vector<std::string>{"manifest.pb", "model.safetensors", "notes.txt"}));
  EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
  EXPECT_EQ(entries_with_prefix(dir_, "step-"), std::vector<std::string>{"step-00000005"});
  // The earlier load still reads the earlier values (its files were replaced, not rewritten).
  EXPECT_EQ(first_weight(before), 5.0f);
  EXPECT_EQ(before.tensors.at("model").at(0).second.to_vector<float>().at(999), 5.0f + 0.25f * 999);
}

TEST_F(CheckpointDir, BadNamesAndFailedSavesLeaveTheDirectoryAsItWas) {
  save_checkpoint(dir(), make_checkpoint(1));
  const std::string latest = read_raw((dir_ / "latest").string());
  auto with = [](auto edit) {
    Checkpoint c = make_checkpoint(2);
    edit(c);
    return c;
  };
  struct Case {
    const char* what;
    Checkpoint checkpoint;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"slash in stem", with([](Checkpoint& c) { c.tensors["a/b"] = {}; }), "tensors stem 'a/b'"},
      {"dot-dot text", with([](Checkpoint& c) { c.texts[".."] = "x"; }), "text name '..'"},
      {"manifest text", with([](Checkpoint& c) { c.texts["manifest.pb"] = "x"; }), "manifest.pb"},
      {"clash", with([](Checkpoint& c) { c.texts["model.safetensors"] = "x"; }), "model.safetensors"},
      {"negative step", with([](Checkpoint& c) { c.step = -1; }), "step -1"},
      {"duplicate tensor", with([](Checkpoint& c) { c.tensors["model"].push_back(c.tensors["model"][0]); }),
       "'w' appears twice"},
      {"undefined tensor", with([](Checkpoint& c) { c.tensors["model"].emplace_back("u", Tensor()); }),
       "'u' is undefined"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::string e = error_of([&] { save_checkpoint(dir(), c.checkpoint); });
    EXPECT_TRUE(has(e, c.expect));
    EXPECT_EQ(entries_with_prefix(dir_, "step-"), std::vector<std::string>{"step-00000001"});
    EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
    EXPECT_EQ(read_raw((dir_ / "latest").string()), latest);
  }
  EXPECT_TRUE(has(error_of([&] { save_checkpoint(dir(), make_checkpoint(2), {.keep_last = -1}); }), "keep_last"));
}

// --- a crash at each stage of a save ---------------------------------------------------------------

// Runs save(options) in a child process that dies at once (as if killed) when the save reports
// `stage`; fails the test when the child got there otherwise.
void crash_at(const std::string& stage, const std::function<void(const CheckpointSaveOptions&)>& save) {
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    CheckpointSaveOptions options{.keep_last = 2};
    options.on_stage = [&](const std::string& s) {
      if (s == stage) ::_exit(0);
    };
    try {
      save(options);
    } catch (...) {
      ::_exit(3);
    }
    ::_exit(4);  // the stage never came
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "stage " << stage << ": status " << status;
}

// The checkpoint `latest` names, which must load (checked against its manifest).
Checkpoint load_named_by_latest(const fs::path& dir) {
  std::string name = read_raw((dir / "latest").string());
  EXPECT_TRUE(name.ends_with("\n")) << name;
  if (!name.empty()) name.pop_back();
  Checkpoint c = load_checkpoint((dir / name).string());
  EXPECT_EQ(checkpoint_dir_name(c.step), name);
  EXPECT_EQ(latest_checkpoint(dir.string()), (dir / name).string());
  return c;
}

TEST_F(CheckpointDir, CrashAtEachStageLeavesLatestNamingACompleteCheckpoint) {
  // The stages of a save, recorded from one that runs through.
  std::vector<std::string> stages;
  CheckpointSaveOptions recording;
  recording.on_stage = [&](const std::string& s) { stages.push_back(s); };
  save_checkpoint((dir_ / "scratch").string(), make_checkpoint(1), recording);
  fs::remove_all(dir_ / "scratch");
  EXPECT_EQ(stages,
            (std::vector<std::string>{"wrote model.safetensors", "wrote optimizer.safetensors", "wrote trainer.json",
                                      "wrote manifest.pb", "directory", "latest", "done"}));
  const auto latest_at = std::find(stages.begin(), stages.end(), "latest") - stages.begin();
  const auto directory_at = std::find(stages.begin(), stages.end(), "directory") - stages.begin();

  for (size_t i = 0; i < stages.size(); ++i) {
    SCOPED_TRACE(stages[i]);
    const bool latest_moved = static_cast<std::ptrdiff_t>(i) >= latest_at;
    const bool directory_moved = static_cast<std::ptrdiff_t>(i) >= directory_at;

    // A new step after two (keep_last 2: step 1 goes only after `latest` names step 3).
    fs::remove_all(dir_);
    save_checkpoint(dir(), make_checkpoint(1));
    save_checkpoint(dir(), make_checkpoint(2));
    crash_at(stages[i], [&](const CheckpointSaveOptions& o) { save_checkpoint(dir(), make_checkpoint(3), o); });
    Checkpoint c = load_named_by_latest(dir_);
    EXPECT_EQ(c.step, latest_moved ? 3 : 2);
    EXPECT_EQ(first_weight(c), static_cast<float>(c.step));
    EXPECT_EQ(fs::exists(step_path(1)), stages[i] != "done");
    save_checkpoint(dir(), make_checkpoint(4), {.keep_last = 2});  // the next save cleans up
    EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
    EXPECT_EQ(load_checkpoint(dir()).step, 4);

    // The step `latest` names, saved again with other contents: always complete, old or new.
    fs::remove_all(dir_);
    save_checkpoint(dir(), make_checkpoint(1));
    save_checkpoint(dir(), make_checkpoint(2));
    Checkpoint second = make_checkpoint(2);
    second.texts["trainer.json"] = "second";
    crash_at(stages[i], [&](const CheckpointSaveOptions& o) { save_checkpoint(dir(), second, o); });
    c = load_named_by_latest(dir_);
    EXPECT_EQ(c.step, 2);
    EXPECT_EQ(c.texts.at("trainer.json"), directory_moved ? "second" : "{\"step\": 2}");
    save_checkpoint(dir(), make_checkpoint(3));
    EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());

    // The first save into an empty directory: before `latest` exists, the complete step directory
    // (if already renamed into place) is still found.
    fs::remove_all(dir_);
    crash_at(stages[i], [&](const CheckpointSaveOptions& o) { save_checkpoint(dir(), make_checkpoint(1), o); });
    EXPECT_EQ(fs::exists(dir_ / "latest"), latest_moved);
    EXPECT_EQ(latest_checkpoint(dir()), directory_moved ? std::optional<std::string>(step_path(1)) : std::nullopt);
  }
}

// --- a saver killed at random moments -----------------------------------------------------------------

TEST_F(CheckpointDir, SaverKilledAtAnyMomentLeavesLatestNamingACompleteCheckpoint) {
  // A child process saves steps (each twice, so the same-step swap is exercised too, with
  // keep_last pruning) until the parent SIGKILLs it after a random delay. After every kill,
  // `latest` must name a directory that loads, whose contents are those of the step it names,
  // and that is no older than what the previous round verified.
  // Kill delays scale with what one save takes here and now (fsync times vary a lot with the
  // machine and its load): up to four saves' worth, so some kills come after completed saves.
  int64_t save_us = 0;
  for (int i = 0; i < 3; ++i) {
    auto start = std::chrono::steady_clock::now();
    save_checkpoint((dir_ / "timing").string(), make_checkpoint(1, 50'000));
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start);
    save_us = std::max<int64_t>(save_us, us.count());
  }
  fs::remove_all(dir_ / "timing");
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int64_t> delay_us(0, 4 * save_us + 1000);
  int64_t verified = 0;
  int kills_mid_save = 0;
  for (int round = 0; round < 25; ++round) {
    SCOPED_TRACE(round);
    const int64_t first = verified + 1;
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      try {
        for (int64_t i = 0;; ++i) {
          int64_t step = first + i / 2;
          save_checkpoint(dir(), make_checkpoint(step, 50'000), {.keep_last = 2});
        }
      } catch (...) {
        ::_exit(3);  // a failed save must not pass for a kill
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
    ::kill(child, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the saver exited by itself (status " << status << ")";
    if (!entries_with_prefix(dir_, ".tmp-").empty()) ++kills_mid_save;

    if (!fs::exists(dir_ / "latest")) {
      ASSERT_EQ(verified, 0) << "latest disappeared";
      continue;
    }
    std::string name = read_raw((dir_ / "latest").string());
    ASSERT_FALSE(name.empty());
    name.pop_back();                                         // "\n"
    Checkpoint c = load_checkpoint((dir_ / name).string());  // throws if damaged
    EXPECT_EQ(checkpoint_dir_name(c.step), name);
    EXPECT_GE(c.step, verified);
    EXPECT_EQ(first_weight(c), static_cast<float>(c.step));
    EXPECT_EQ(c.tensors.at("model").at(0).second.to_vector<float>().back(), c.step + 0.25f * 49'999);
    EXPECT_EQ(c.texts.at("trainer.json"), str_cat("{\"step\": ", c.step, "}"));
    EXPECT_EQ(latest_checkpoint(dir()), (dir_ / name).string());
    verified = c.step;
  }
  EXPECT_GT(verified, 0) << "no save ever completed (one took " << save_us << " us when timed)";
  // Most kills land mid-save (the child does nothing else), so leftovers were seen and cleaned.
  EXPECT_GT(kills_mid_save, 0);
  save_checkpoint(dir(), make_checkpoint(verified + 1));
  EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
}

// --- saves by many writers --------------------------------------------------------------------------

// A ZeRO-like layout (the optimizer's real one is its own): the parameters flattened in order into
// one buffer padded to a multiple of dp, rank r owning [r * n / dp, (r + 1) * n / dp) of it, that
// is, of each parameter the part of that range that falls on it. With dp 3 the rank boundaries
// fall inside parameters and the last rank holds padding.
struct Param {
  std::string name;
  Shape shape;
};
const std::vector<Param>& params() {
  static const std::vector<Param> p = {
      {"model.a.weight", {3, 5}}, {"model.b.bias", {7}}, {"model.c.weight", {2, 2, 3}}, {"model.d.scale", {1}}};
  return p;
}

// The range of one parameter's flattening that a rank owns.
struct Owned {
  std::string param;
  Shape shape;
  int64_t begin = 0;
  int64_t end = 0;
};

std::vector<Owned> owned_by(int rank, int dp) {
  int64_t total = 0;
  for (const Param& p : params()) total += numel(p.shape);
  const int64_t padded = (total + dp - 1) / dp * dp;
  const int64_t lo = rank * padded / dp;
  const int64_t hi = (rank + 1) * padded / dp;
  std::vector<Owned> out;
  int64_t offset = 0;
  for (const Param& p : params()) {
    const int64_t b = std::max(lo, offset);
    const int64_t e = std::min(hi, offset + numel(p.shape));
    if (b < e) out.push_back({p.name, p.shape, b - offset, e - offset});
    offset += numel(p.shape);
  }
  return out;
}

// The optimizer states the tests shard, by name suffix, with their dtype.
const std::vector<std::pair<std::string, DType>> kStates = {{".exp_avg", DType::F32}, {".exp_avg_sq", DType::BF16}};

// Every parameter and state whole, with values that differ everywhere (and a negative zero and a
// subnormal, which a conversion would lose).
std::map<std::string, Tensor> full_state(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  auto values = [&](const Shape& shape) {
    std::vector<float> v(static_cast<size_t>(numel(shape)));
    for (float& x : v) x = normal(rng);
    v[0] = -0.0f;
    if (v.size() > 2) v[2] = 1e-40f;
    return Tensor::from<float>(v, shape);
  };
  std::map<std::string, Tensor> out;
  for (const Param& p : params()) {
    out[p.name] = values(p.shape);
    for (const auto& [suffix, dtype] : kStates) out[p.name + suffix] = values(p.shape).to(dtype);
  }
  return out;
}

std::string rank_stem(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "optimizer-rank%05d", rank);
  return buf;
}

// What rank `rank` of `dp` writes: its slices of every state, rank 0 also the whole model and the
// trainer state, every rank a text of its own.
Checkpoint rank_part(int rank, int dp, int64_t step, const std::map<std::string, Tensor>& full) {
  Checkpoint c;
  c.step = step;
  const std::string stem = rank_stem(rank);
  NamedTensors& tensors = c.tensors[stem];
  for (const Owned& o : owned_by(rank, dp)) {
    for (const auto& [suffix, dtype] : kStates) {
      const std::string name = o.param + suffix;
      tensors.emplace_back(name, full.at(name).reshape({-1}).narrow(0, o.begin, o.end - o.begin));
      c.slices[stem][name] = TensorSlice{.global_shape = o.shape, .flat_start = o.begin};
    }
  }
  if (rank == 0) {
    NamedTensors& model = c.tensors["model"];
    for (const Param& p : params()) model.emplace_back(p.name, full.at(p.name));
    c.texts["trainer.json"] = str_cat("{\"step\": ", step, "}");
  }
  c.texts[str_cat("rng-rank", rank, ".json")] = str_cat("{\"rank\": ", rank, ", \"step\": ", step, "}");
  return c;
}

// Saves `step` as `dp` ranks would, one after another in this process: rank 0 prepares, every
// rank writes its part, the parts travel to rank 0 as bytes, rank 0 commits.
std::string save_as_ranks(const std::string& dir, int dp, int64_t step, const std::map<std::string, Tensor>& full,
                          const CheckpointSaveOptions& options = {}) {
  prepare_checkpoint_dir(dir, step);
  std::vector<CheckpointPart> parts;
  for (int r = 0; r < dp; ++r) {
    const CheckpointPart part = write_checkpoint_part(dir, rank_part(r, dp, step, full));
    parts.push_back(CheckpointPart::parse(part.serialize()));
  }
  return commit_checkpoint(dir, step, parts, options);
}

// `back` holds exactly what the ranks' parts held: every stem's tensors (names, order, dtype,
// shape, bytes), slices and texts.
void expect_parts_back(const Checkpoint& back, int dp, int64_t step, const std::map<std::string, Tensor>& full) {
  EXPECT_EQ(back.step, step);
  std::set<std::string> stems;
  std::map<std::string, std::string> texts;
  for (int r = 0; r < dp; ++r) {
    SCOPED_TRACE(str_cat("rank ", r));
    const Checkpoint part = rank_part(r, dp, step, full);
    texts.insert(part.texts.begin(), part.texts.end());
    for (const auto& [stem, expected] : part.tensors) {
      SCOPED_TRACE(stem);
      stems.insert(stem);
      ASSERT_TRUE(back.tensors.count(stem));
      const NamedTensors& got = back.tensors.at(stem);
      expect_same_tensors(got, expected);
      auto slices = part.slices.find(stem);
      if (slices == part.slices.end()) {
        EXPECT_EQ(back.slices.count(stem), 0u);
      } else {
        ASSERT_TRUE(back.slices.count(stem));
        EXPECT_EQ(back.slices.at(stem), slices->second);
      }
    }
  }
  EXPECT_EQ(back.tensors.size(), stems.size());
  EXPECT_EQ(back.texts, texts);
}

TEST_F(CheckpointDir, ThreeRanksWritePartsOneCommitsEverySliceComesBackBitwise) {
  const auto full = full_state(1);
  save_checkpoint(dir(), make_checkpoint(4));
  std::vector<std::string> stages;
  CheckpointSaveOptions recording;
  recording.on_stage = [&](const std::string& s) { stages.push_back(s); };
  EXPECT_EQ(save_as_ranks(dir(), 3, 5, full, recording), step_path(5));
  EXPECT_EQ(stages, (std::vector<std::string>{"wrote manifest.pb", "directory", "latest", "done"}));
  EXPECT_EQ(read_raw((dir_ / "latest").string()), "step-00000005\n");
  EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
  EXPECT_EQ(entries_with_prefix(step_path(5), ""),
            (std::vector<std::string>{"manifest.pb", "model.safetensors", "optimizer-rank00000.safetensors",
                                      "optimizer-rank00001.safetensors", "optimizer-rank00002.safetensors",
                                      "rng-rank0.json", "rng-rank1.json", "rng-rank2.json", "trainer.json"}));

  // The manifest: version 2, every part's files in the order of the parts, slices as flat ranges
  // of their global shape.
  const CheckpointManifest m = read_checkpoint_manifest(step_path(5));
  EXPECT_EQ(m.format_version(), 2);
  std::vector<std::string> files;
  for (const CheckpointFile& f : m.files()) files.push_back(f.name());
  EXPECT_EQ(files, (std::vector<std::string>{"model.safetensors", "optimizer-rank00000.safetensors", "rng-rank0.json",
                                             "trainer.json", "optimizer-rank00001.safetensors", "rng-rank1.json",
                                             "optimizer-rank00002.safetensors", "rng-rank2.json"}));
  // Rank 1 owns buffer elements [12, 24): the last 3 of a.weight (15), b.bias, 2 of c.weight.
  const CheckpointTensor* a = nullptr;
  for (const CheckpointTensor& t : m.tensors()) {
    if (t.name() == "model.a.weight.exp_avg" && t.file() == "optimizer-rank00001.safetensors") a = &t;
  }
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(std::vector<int64_t>(a->shape().begin(), a->shape().end()), (std::vector<int64_t>{3, 5}));
  EXPECT_TRUE(a->has_flat());
  EXPECT_EQ(a->flat().start(), 12);
  EXPECT_EQ(a->flat().size(), 3);
  EXPECT_TRUE(a->slice_start().empty());
  EXPECT_EQ(load_safetensors(step_path(5) + "/optimizer-rank00001.safetensors").at("model.a.weight.exp_avg").shape(),
            (Shape{3}));

  for (const std::string& from : {dir(), step_path(5)}) {
    SCOPED_TRACE(from);
    expect_parts_back(load_checkpoint(from), 3, 5, full);
  }
  EXPECT_EQ(list_checkpoints(dir()), (std::vector<std::string>{step_path(4), step_path(5)}));
}

TEST_F(CheckpointDir, PartsWrittenByConcurrentProcesses) {
  // Three processes write their parts at the same time into the prepared directory and hand the
  // bytes back (as a gather would); the parent commits.
  const auto full = full_state(2);
  const fs::path scratch = dir_ / "scratch";
  fs::create_directories(scratch);
  const std::string ckpt_dir = (dir_ / "ckpt").string();
  prepare_checkpoint_dir(ckpt_dir, 7);
  std::vector<pid_t> children;
  for (int r = 0; r < 3; ++r) {
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      try {
        const CheckpointPart part = write_checkpoint_part(ckpt_dir, rank_part(r, 3, 7, full));
        std::ofstream out(scratch / str_cat("part-", r), std::ios::binary);
        out << part.serialize();
        out.close();
        ::_exit(out.good() ? 0 : 4);
      } catch (...) {
        ::_exit(3);
      }
    }
    children.push_back(child);
  }
  for (pid_t child : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  }
  std::vector<CheckpointPart> parts;
  for (int r = 0; r < 3; ++r) {
    parts.push_back(CheckpointPart::parse(read_raw((scratch / str_cat("part-", r)).string()), str_cat("rank ", r)));
  }
  commit_checkpoint(ckpt_dir, 7, parts);
  expect_parts_back(load_checkpoint(ckpt_dir), 3, 7, full);
}

TEST_F(CheckpointDir, AssembleFlatRangeRepartitionsToAnotherDp) {
  const auto full = full_state(3);
  save_as_ranks(dir(), 3, 5, full);
  const Checkpoint back = load_checkpoint(dir());

  for (const Param& p : params()) {
    for (const auto& [suffix, dtype] : kStates) {
      const std::string name = p.name + suffix;
      SCOPED_TRACE(name);
      const Tensor original = full.at(name);
      const int64_t n = original.numel();
      EXPECT_EQ(find_global_shape(back, name), p.shape);
      // k nearly equal ranges, concatenated: the original flattened tensor, bit for bit.
      for (int64_t k : {1, 2, 4}) {
        SCOPED_TRACE(str_cat(k, " ranges"));
        std::string joined;
        for (int64_t i = 0; i < k; ++i) {
          const int64_t lo = i * n / k;
          const int64_t hi = (i + 1) * n / k;
          Tensor got = assemble_flat_range(back, name, lo, hi - lo, dtype);
          EXPECT_EQ(got.shape(), (Shape{hi - lo}));
          EXPECT_EQ(got.dtype(), dtype);
          joined += tensor_bytes(got);
        }
        EXPECT_EQ(joined, tensor_bytes(original));
      }
      // The ranges a dp-2 and a dp-4 run's ranks own of it.
      for (int dp : {2, 4}) {
        for (int r = 0; r < dp; ++r) {
          for (const Owned& o : owned_by(r, dp)) {
            if (o.param != p.name) continue;
            SCOPED_TRACE(str_cat("dp ", dp, " rank ", r));
            EXPECT_EQ(tensor_bytes(assemble_flat_range(back, name, o.begin, o.end - o.begin, dtype)),
                      tensor_bytes(original.reshape({-1}).narrow(0, o.begin, o.end - o.begin)));
          }
        }
      }
    }
    // Whole tensors assemble too (the model's, from one stem), and from the in-memory parts alike.
    EXPECT_EQ(tensor_bytes(assemble_flat_range(back, p.name, 0, numel(p.shape), DType::F32)),
              tensor_bytes(full.at(p.name)));
  }
  Checkpoint in_memory = rank_part(1, 3, 5, full);
  EXPECT_EQ(assemble_flat_range(in_memory, "model.a.weight.exp_avg", 13, 2, DType::F32).to_vector<float>(),
            full.at("model.a.weight.exp_avg").reshape({-1}).narrow(0, 13, 2).to_vector<float>());
  EXPECT_EQ(assemble_flat_range(back, "model.b.bias.exp_avg", 3, 0, DType::F32).numel(), 0);
  EXPECT_EQ(find_global_shape(back, "model.nope"), std::nullopt);
}

TEST_F(CheckpointDir, AssembleFlatRangeErrorsNameTheTensorAndTheRange) {
  const auto full = full_state(4);
  save_as_ranks(dir(), 3, 5, full);
  const Checkpoint back = load_checkpoint(dir());

  // Without rank 1's file, what it held of a.weight is missing: [12, 15) by the dp-3 layout.
  const std::vector<Owned> rank1 = owned_by(1, 3);
  ASSERT_EQ(rank1.front().param, "model.a.weight");
  const std::string gap = str_cat("[", rank1.front().begin, ", ", rank1.front().end, ")");
  EXPECT_EQ(gap, "[12, 15)");
  Checkpoint without = back;
  without.tensors.erase(rank_stem(1));
  std::string e = error_of([&] { assemble_flat_range(without, "model.a.weight.exp_avg", 0, 15, DType::F32); });
  EXPECT_TRUE(has(e, "tensor 'model.a.weight.exp_avg'"));
  EXPECT_TRUE(has(e, "elements [12, 15) of the asked [0, 15) are in no file"));
  EXPECT_TRUE(has(e, "[0, 12) in optimizer-rank00000.safetensors"));
  e = error_of([&] { assemble_flat_range(without, "model.a.weight.exp_avg", 10, 4, DType::F32); });
  EXPECT_TRUE(has(e, "elements [12, 14) of the asked [10, 14)"));
  // b.bias was rank 1's alone; c.weight is missing at its start only.
  e = error_of([&] { assemble_flat_range(without, "model.b.bias.exp_avg", 0, 7, DType::F32); });
  EXPECT_TRUE(has(e, "tensor 'model.b.bias.exp_avg' is in no file"));
  e = error_of([&] { assemble_flat_range(without, "model.c.weight.exp_avg_sq", 0, 12, DType::BF16); });
  EXPECT_TRUE(has(e, "elements [0, 2) of the asked [0, 12)"));
  EXPECT_EQ(assemble_flat_range(without, "model.a.weight.exp_avg", 0, 12, DType::F32).numel(), 12);  // rank 0's

  // Two holders of the same elements: which to take is not for the loader to guess.
  Checkpoint twice = back;
  twice.tensors["extra"] = {{"model.b.bias.exp_avg", full.at("model.b.bias.exp_avg")}};
  e = error_of([&] { assemble_flat_range(twice, "model.b.bias.exp_avg", 0, 7, DType::F32); });
  EXPECT_TRUE(has(e, "overlap"));
  EXPECT_TRUE(has(e, "extra.safetensors"));
  EXPECT_TRUE(has(e, "optimizer-rank00001.safetensors"));

  Checkpoint reshaped = back;
  reshaped.slices.at(rank_stem(2)).at("model.c.weight.exp_avg").global_shape = {12};
  e = error_of([&] { assemble_flat_range(reshaped, "model.c.weight.exp_avg", 0, 12, DType::F32); });
  EXPECT_TRUE(has(e, "global shape [2, 2, 3]"));
  EXPECT_TRUE(has(e, "[12] in optimizer-rank00002.safetensors"));

  e = error_of([&] { assemble_flat_range(back, "model.b.bias.exp_avg", 5, 3, DType::F32); });
  EXPECT_TRUE(has(e, "elements [5, 8) asked for, but its global shape [7] has 7"));
  e = error_of([&] { assemble_flat_range(back, "model.b.bias.exp_avg", -1, 2, DType::F32); });
  EXPECT_TRUE(has(e, "elements [-1, 1) asked for"));
  e = error_of([&] { assemble_flat_range(back, "model.nope", 0, 1, DType::F32); });
  EXPECT_TRUE(has(e, "checkpoint step 5: tensor 'model.nope' is in no file"));
}

TEST_F(CheckpointDir, CrashBeforeCommitLeavesLatestOnThePreviousStep) {
  const auto full = full_state(5);
  save_checkpoint(dir(), make_checkpoint(1));
  // Every rank wrote its part of step 2; the job died before rank 0 committed.
  const std::string tmp = prepare_checkpoint_dir(dir(), 2);
  EXPECT_EQ(tmp, (dir_ / ".tmp-step-00000002").string());
  for (int r = 0; r < 3; ++r) write_checkpoint_part(dir(), rank_part(r, 3, 2, full));
  EXPECT_EQ(read_raw((dir_ / "latest").string()), "step-00000001\n");
  EXPECT_EQ(latest_checkpoint(dir()), step_path(1));
  EXPECT_EQ(list_checkpoints(dir()), std::vector<std::string>{step_path(1)});
  EXPECT_EQ(first_weight(load_checkpoint(dir())), 1.0f);
  EXPECT_EQ(entries_with_prefix(dir_, ".tmp-"), std::vector<std::string>{".tmp-step-00000002"});
  EXPECT_EQ(entries_with_prefix(tmp, "").size(), 8u);

  // The restarted job saves the same step again: prepare empties what the dead one left.
  prepare_checkpoint_dir(dir(), 2);
  EXPECT_TRUE(entries_with_prefix(tmp, "").empty());
  for (int r = 0; r < 2; ++r) write_checkpoint_part(dir(), rank_part(r, 3, 2, full));
  // ... and dies again; the next save is of another step, and its prepare removes step 2's.
  prepare_checkpoint_dir(dir(), 3);
  EXPECT_EQ(entries_with_prefix(dir_, ".tmp-"), std::vector<std::string>{".tmp-step-00000003"});
  save_as_ranks(dir(), 3, 3, full);
  EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
  expect_parts_back(load_checkpoint(dir()), 3, 3, full);

  // A part written without a prepared directory, or twice, is refused.
  std::string e = error_of([&] { write_checkpoint_part(dir(), rank_part(0, 3, 9, full)); });
  EXPECT_TRUE(has(e, (dir_ / ".tmp-step-00000009").string()));
  EXPECT_TRUE(has(e, "prepare_checkpoint_dir"));
  prepare_checkpoint_dir(dir(), 9);
  write_checkpoint_part(dir(), rank_part(0, 3, 9, full));
  e = error_of([&] { write_checkpoint_part(dir(), rank_part(0, 3, 9, full)); });
  EXPECT_TRUE(has(e, (dir_ / ".tmp-step-00000009/model.safetensors").string()));
  EXPECT_TRUE(has(e, "already written by another part"));
  EXPECT_EQ(latest_checkpoint(dir()), step_path(3));
}

TEST_F(CheckpointDir, CommitRefusesClashingStrayAndMissingFiles) {
  const auto full = full_state(6);
  save_checkpoint(dir(), make_checkpoint(1));
  const std::string latest = read_raw((dir_ / "latest").string());
  auto unchanged = [&] {
    EXPECT_EQ(read_raw((dir_ / "latest").string()), latest);
    EXPECT_EQ(entries_with_prefix(dir_, "step-"), std::vector<std::string>{"step-00000001"});
    EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());  // the failed commit removed its directory
  };
  auto write_all = [&](int64_t step) {
    prepare_checkpoint_dir(dir(), step);
    std::vector<CheckpointPart> parts;
    for (int r = 0; r < 3; ++r) parts.push_back(write_checkpoint_part(dir(), rank_part(r, 3, step, full)));
    return parts;
  };

  // Two ranks that wrote the same file (at the same moment, so neither saw the other's).
  std::vector<CheckpointPart> parts = write_all(2);
  std::string e = error_of([&] { commit_checkpoint(dir(), 2, {parts[0], parts[1], parts[0]}); });
  EXPECT_TRUE(has(e, "file model.safetensors is written by parts 0 and 2"));
  unchanged();

  // A part that was not gathered: its files would be in the directory and in no manifest.
  parts = write_all(2);
  e = error_of([&] { commit_checkpoint(dir(), 2, {parts[0], parts[2]}); });
  EXPECT_TRUE(has(e, (dir_ / ".tmp-step-00000002").string()));
  EXPECT_TRUE(has(e, "in the directory but in no part (2 parts)"));
  EXPECT_TRUE(e.find("optimizer-rank00001.safetensors") != std::string::npos ||
              e.find("rng-rank1.json") != std::string::npos)
      << e;
  unchanged();

  // A file a part lists that is not there (or not of its size).
  parts = write_all(2);
  fs::remove(dir_ / ".tmp-step-00000002" / "rng-rank1.json");
  e = error_of([&] { commit_checkpoint(dir(), 2, parts); });
  EXPECT_TRUE(has(e, (dir_ / ".tmp-step-00000002" / "rng-rank1.json").string()));
  EXPECT_TRUE(has(e, "missing"));
  unchanged();

  // A part of another step, and no prepared directory at all.
  parts = write_all(2);
  prepare_checkpoint_dir(dir(), 3);
  e = error_of([&] { commit_checkpoint(dir(), 3, parts); });
  EXPECT_TRUE(has(e, "part 0 is of step 2, expected 3"));
  unchanged();
  e = error_of([&] { commit_checkpoint(dir(), 3, parts); });
  EXPECT_TRUE(has(e, ".tmp-step-00000003"));
  EXPECT_TRUE(has(e, "missing"));
  unchanged();

  e = error_of([&] { CheckpointPart::parse("\xff\xff\xff not a manifest", "part from rank 2"); });
  EXPECT_TRUE(has(e, "part from rank 2"));

  save_as_ranks(dir(), 3, 2, full);  // all of it, at last
  expect_parts_back(load_checkpoint(dir()), 3, 2, full);
}

TEST_F(CheckpointDir, SlicesThatDoNotFitTheirGlobalShapeAreErrorsOnSaveAndLoad) {
  const auto full = full_state(7);
  const std::string stem = rank_stem(2);
  const std::string c_avg = "model.c.weight.exp_avg";  // rank 2 of 3 holds [2, 12) of its 12
  auto with = [&](auto edit) {
    Checkpoint c = rank_part(2, 3, 5, full);
    edit(c);
    return c;
  };
  struct Case {
    const char* what;
    Checkpoint checkpoint;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {"beyond",
       with([&](Checkpoint& c) { c.slices[stem][c_avg].flat_start = 5; }),
       {"slice '" + c_avg + "' of stem '" + stem + "'", "[5, 15)", "global shape [2, 2, 3] has 12"}},
      {"negative start", with([&](Checkpoint& c) { c.slices[stem][c_avg].flat_start = -1; }), {"[-1, 9)"}},
      {"smaller global shape",
       with([&](Checkpoint& c) {
         c.slices[stem][c_avg].global_shape = {2, 3};
       }),
       {"[2, 12)", "[2, 3] has 6"}},
      {"not 1-D",
       with([&](Checkpoint& c) {
         c.tensors["model"] = {{"model.a.weight", full.at("model.a.weight")}};
         c.slices["model"]["model.a.weight"] = {.global_shape = {3, 5}};
       }),
       {"slice 'model.a.weight' of stem 'model' must be stored as a 1-D tensor, not [3, 5]"}},
      {"no such tensor",
       with([&](Checkpoint& c) { c.slices[stem]["model.x"] = {.global_shape = {1}}; }),
       {"slice 'model.x' of stem '" + stem + "' is not one of its tensors"}},
      {"no such stem",
       with([&](Checkpoint& c) { c.slices["ghost"]["x"] = {.global_shape = {1}}; }),
       {"slices of stem 'ghost', which has no tensors"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::string e = error_of([&] { save_checkpoint(dir(), c.checkpoint); });
    for (const std::string& part : c.expect) EXPECT_TRUE(has(e, part));
    EXPECT_FALSE(fs::exists(step_path(5)));
    EXPECT_TRUE(!fs::exists(dir_) || entries_with_prefix(dir_, ".tmp-").empty());
  }
  // A single process may save slices too (a dp-1 run of the sharded format).
  save_checkpoint(dir(), rank_part(2, 3, 5, full));
  EXPECT_EQ(load_checkpoint(dir()).slices.at(stem).at(c_avg),
            (TensorSlice{.global_shape = {2, 2, 3}, .flat_start = 2}));

  // On load: a manifest whose slice does not fit its global shape, or not the file's tensor.
  save_as_ranks(dir(), 3, 5, full);
  const std::string step_dir = step_path(5);
  const std::string manifest = step_dir + "/manifest.pb";
  const std::string good = read_raw(manifest);
  auto edit_c_avg = [&](auto edit) {
    write_raw(manifest, good);
    edit_manifest(step_dir, [&](CheckpointManifest& m) {
      for (CheckpointTensor& t : *m.mutable_tensors()) {
        if (t.name() == c_avg && t.file() == stem + ".safetensors") edit(m, t);
      }
    });
    return error_of([&] { load_checkpoint(step_dir); });
  };
  std::string e = edit_c_avg([](CheckpointManifest&, CheckpointTensor& t) { t.mutable_flat()->set_start(3); });
  EXPECT_TRUE(has(e, manifest));
  EXPECT_TRUE(has(e, "tensor '" + c_avg + "' of " + stem + ".safetensors holds flat elements [3, 13)"));
  EXPECT_TRUE(has(e, "global shape [2, 2, 3] has 12"));
  EXPECT_EQ(latest_checkpoint(dir()), std::nullopt);  // damaged, and the only step

  e = edit_c_avg([](CheckpointManifest&, CheckpointTensor& t) { t.set_shape(2, 2); });
  EXPECT_TRUE(has(e, "[2, 12)"));
  EXPECT_TRUE(has(e, "global shape [2, 2, 2] has 8"));

  e = edit_c_avg([](CheckpointManifest&, CheckpointTensor& t) { t.mutable_flat()->set_size(9); });
  EXPECT_TRUE(has(e, step_dir + "/" + stem + ".safetensors"));
  EXPECT_TRUE(has(e, "tensor '" + c_avg + "' has shape [10]"));
  EXPECT_TRUE(has(e, "flat slice [2, 11) of [2, 2, 3], stored as [9]"));

  e = edit_c_avg([](CheckpointManifest& m, CheckpointTensor&) { m.set_format_version(1); });
  EXPECT_TRUE(has(e, manifest));  // the first flat tensor it meets is rank 0's
  EXPECT_TRUE(has(e, "of optimizer-rank00000.safetensors has flat, which format_version 1 does not have"));

  e = edit_c_avg([](CheckpointManifest&, CheckpointTensor& t) { t.add_slice_start(0); });
  EXPECT_TRUE(has(e, "has both flat and slice_start/slice_size"));

  write_raw(manifest, good);
  expect_parts_back(load_checkpoint(step_dir), 3, 5, full);
}

TEST_F(CheckpointDir, VersionOneManifestsStillLoadAndWholeSavesStillWriteThem) {
  // A step directory as version-1 code wrote it, the manifest's text spelled out here.
  const std::string step_dir = step_path(3);
  fs::create_directories(step_dir);
  const NamedTensors model = {{"w", Tensor::from<float>({1.5f, -2.0f, 0.25f, 8.0f, -0.0f, 3.0f}, {2, 3})},
                              {"s", Tensor::scalar<float>(7.0f)}};
  save_safetensors(step_dir + "/model.safetensors", model);
  write_raw(step_dir + "/trainer.json", "{\"step\": 3}");
  const std::string v1 = str_cat(
      "# bvllm checkpoint manifest: parallel/checkpoint.proto CheckpointManifest\n"
      "format_version: 1\n"
      "step: 3\n"
      "files {\n  name: \"model.safetensors\"\n  kind: TENSORS\n  bytes: ",
      fs::file_size(step_dir + "/model.safetensors"),
      "\n}\n"
      "files {\n  name: \"trainer.json\"\n  kind: TEXT\n  bytes: 11\n}\n"
      "tensors {\n  name: \"w\"\n  file: \"model.safetensors\"\n  dtype: \"F32\"\n  shape: 2\n  shape: 3\n"
      "  slice_start: 0\n  slice_start: 0\n  slice_size: 2\n  slice_size: 3\n}\n"
      "tensors {\n  name: \"s\"\n  file: \"model.safetensors\"\n  dtype: \"F32\"\n}\n");
  write_raw(step_dir + "/manifest.pb", v1);

  EXPECT_EQ(latest_checkpoint(dir()), step_dir);
  Checkpoint back = load_checkpoint(dir());
  EXPECT_EQ(back.step, 3);
  EXPECT_TRUE(back.slices.empty());
  EXPECT_EQ(back.texts.at("trainer.json"), "{\"step\": 3}");
  ASSERT_EQ(back.tensors.at("model").size(), 2u);
  EXPECT_EQ(tensor_bytes(back.tensors.at("model")[0].second), tensor_bytes(model[0].second));
  EXPECT_EQ(back.tensors.at("model")[1].second.shape(), Shape{});
  EXPECT_EQ(tensor_bytes(assemble_flat_range(back, "w", 2, 3, DType::F32)),
            tensor_bytes(model[0].second.reshape({-1}).narrow(0, 2, 3)));

  // Saving the same whole tensors today writes that same version-1 manifest, byte for byte.
  Checkpoint again;
  again.step = 3;
  again.tensors["model"] = model;
  again.texts["trainer.json"] = "{\"step\": 3}";
  save_checkpoint((dir_ / "again").string(), again);
  EXPECT_EQ(read_raw((dir_ / "again" / "step-00000003" / "manifest.pb").string()), v1);
}

}  // namespace
}  // namespace bvllm::parallel
