// LMDB shards: records read back in write order across shards, map growth from a tiny map,
// batched commits (what survives a killed writer), adoption of unfinished shards, the index file
// and its errors, the prefix lock, concurrent readers.
#include "data/shard.h"

#include <gtest/gtest.h>
#include <lmdb.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "tests/support/messages.h"

namespace bvllm::data {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

// "<prefix><i>", built by appending (GCC 12 misreports "literal" + std::string as -Wrestrict).
std::string name(const char* prefix, int i, const char* suffix = "") {
  std::string out = prefix;
  out += std::to_string(i);
  out += suffix;
  return out;
}

// Sample i: a video with `frames` pseudo-random "frames" of `frame_bytes` each (incompressible,
// so sizes on disk are predictable).
Sample make_sample(int i, int frames = 2, size_t frame_bytes = 1000) {
  Sample sample;
  sample.set_id(name("s", i));
  sample.set_kind(Sample::VIDEO);
  sample.set_source(name("videos/", i, ".mp4"));
  sample.set_fps(30);
  sample.set_duration(frames);
  sample.set_sample_fps(1);
  std::mt19937 rng(static_cast<uint32_t>(i));
  for (int f = 0; f < frames; ++f) {
    std::string bytes(frame_bytes, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    sample.add_frames(std::move(bytes));
    sample.add_timestamps(f);
  }
  sample.set_width(4);
  sample.set_height(3);
  Turn* turn = sample.add_conversations();
  turn->set_from("human");
  turn->set_value(name("<video>\nWhat happens in ", i, "?"));
  return sample;
}

class Shards : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("bvllm_shard_test_" + std::to_string(::getpid()))).string();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs `f` in a child process, which `f` ends with kill_self(): what bvllm_prep leaves behind
  // when killed (LMDB environments are opened in the child, after the fork).
  static void in_killed_child(const std::function<void()>& f) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      try {
        f();
      } catch (...) {
      }
      ::_exit(3);  // f threw or returned without killing itself
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;
  }
  static void kill_self() { ::raise(SIGKILL); }

  std::string path(const std::string& file) const { return (fs::path(dir_) / file).string(); }

  std::string dir_;
};

void expect_same(const Sample& a, const Sample& b) {
  EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString()) << a.id() << " vs " << b.id();
}

TEST_F(Shards, ReadsBackEveryRecordInWriteOrder) {
  {
    ShardWriter writer(dir_, {.batch = 4});
    for (int i = 0; i < 10; ++i) writer.add(make_sample(i));
    EXPECT_EQ(writer.added(), 10);
    writer.finish();
    ASSERT_EQ(writer.written().size(), 1u);
    EXPECT_EQ(writer.written()[0].file, "shard-00000");
  }
  const ShardIndex index = read_index(dir_);
  ASSERT_EQ(index.shards.size(), 1u);
  EXPECT_EQ(index.shards[0].file, "shard-00000");
  EXPECT_EQ(index.shards[0].samples, 10);
  EXPECT_EQ(index.shards[0].bytes, static_cast<int64_t>(fs::file_size(path("shard-00000"))));
  EXPECT_EQ(index.samples(), 10);

  const ShardReader reader(dir_);
  ASSERT_EQ(reader.size(), 10);
  std::vector<std::string> expected_ids;
  for (int i = 0; i < 10; ++i) {
    expect_same(reader.get(i), make_sample(i));
    expected_ids.push_back(name("s", i));
  }
  EXPECT_EQ(reader.ids(), expected_ids);
  EXPECT_EQ(error_of([&] { reader.get(10); }), dir_ + ": sample 10 is out of range (the shards hold 10)");
  EXPECT_EQ(error_of([&] { reader.get(-1); }), dir_ + ": sample -1 is out of range (the shards hold 10)");
  // Only the shard, its index and the lock files: no temporary left behind.
  std::set<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir_)) files.insert(entry.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{"shard-00000", "index.json", ".shard.lock", ".index.lock"}));
}

// The on-disk contract with other LMDB tools (mdb_dump): one unnamed database, keys are the
// record numbers as 10 zero-padded digits, values serialized Samples.
TEST_F(Shards, KeysAreZeroPaddedRecordNumbers) {
  {
    ShardWriter writer(dir_, {.batch = 2});
    for (int i = 0; i < 3; ++i) writer.add(make_sample(i));
  }
  MDB_env* env = nullptr;
  ASSERT_EQ(mdb_env_create(&env), 0);
  ASSERT_EQ(mdb_env_open(env, path("shard-00000").c_str(), MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK, 0644), 0);
  MDB_txn* txn = nullptr;
  ASSERT_EQ(mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn), 0);
  MDB_dbi dbi = 0;
  ASSERT_EQ(mdb_dbi_open(txn, nullptr, 0, &dbi), 0);
  MDB_cursor* cursor = nullptr;
  ASSERT_EQ(mdb_cursor_open(txn, dbi, &cursor), 0);
  std::vector<std::string> keys;
  MDB_val k, v;
  for (int rc = mdb_cursor_get(cursor, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) {
    keys.emplace_back(static_cast<const char*>(k.mv_data), k.mv_size);
    Sample sample;
    ASSERT_TRUE(sample.ParseFromArray(v.mv_data, static_cast<int>(v.mv_size)));
    expect_same(sample, make_sample(static_cast<int>(keys.size()) - 1));
  }
  mdb_cursor_close(cursor);
  mdb_txn_abort(txn);
  mdb_env_close(env);
  EXPECT_EQ(keys, (std::vector<std::string>{"0000000000", "0000000001", "0000000002"}));
  EXPECT_EQ(shard_key(1234567), "0001234567");
}

TEST_F(Shards, MapGrowsFromATinyMapWithoutLosingARecord) {
  // 64 KiB to start; 40 records of ~50 KB need ~2 MB: the map doubles several times, and a
  // batch that hits MDB_MAP_FULL is written again whole.
  {
    ShardWriter writer(dir_, {.batch = 3, .initial_map_bytes = 64 << 10});
    for (int i = 0; i < 40; ++i) writer.add(make_sample(i, 5, 10000));
  }
  EXPECT_GT(fs::file_size(path("shard-00000")), 2'000'000u);
  const ShardReader reader(dir_);
  ASSERT_EQ(reader.size(), 40);
  for (int i = 0; i < 40; ++i) expect_same(reader.get(i), make_sample(i, 5, 10000));
}

TEST_F(Shards, NewShardBeforeTheSizeLimitAndReadOrderAcrossShards) {
  // ~20 KB per record, 64 KB per shard: three records fit, the fourth starts a new shard.
  const int64_t limit = 64 << 10;
  {
    ShardWriter writer(dir_, {.max_shard_bytes = limit, .batch = 2});
    for (int i = 0; i < 10; ++i) writer.add(make_sample(i, 2, 10000));
    writer.add(make_sample(10, 10, 10000));  // larger than a shard: alone in its own
    writer.add(make_sample(11, 2, 10000));
  }
  const ShardIndex index = read_index(dir_);
  std::vector<std::pair<std::string, int64_t>> shards;
  for (const ShardInfo& info : index.shards) {
    shards.emplace_back(info.file, info.samples);
    EXPECT_EQ(info.bytes, static_cast<int64_t>(fs::file_size(path(info.file))));
    // The estimate leaves out LMDB's meta and branch pages: a few pages at most.
    if (info.samples > 1) {
      EXPECT_LE(info.bytes, limit + 4 * 4096) << info.file;
    }
  }
  EXPECT_EQ(shards, (std::vector<std::pair<std::string, int64_t>>{{"shard-00000", 3},
                                                                  {"shard-00001", 3},
                                                                  {"shard-00002", 3},
                                                                  {"shard-00003", 1},
                                                                  {"shard-00004", 1},
                                                                  {"shard-00005", 1}}));
  const ShardReader reader(dir_);
  ASSERT_EQ(reader.size(), 12);
  for (int i = 0; i < 12; ++i) expect_same(reader.get(i), make_sample(i, i == 10 ? 10 : 2, 10000));
}

TEST_F(Shards, AKilledWriterKeepsItsCommittedBatchesAndTheNextWriterAdoptsThem) {
  // Batches of 4: records 0-7 are committed, 8-9 are in the batch the kill loses.
  in_killed_child([&] {
    ShardWriter writer(dir_, {.batch = 4});
    for (int i = 0; i < 10; ++i) writer.add(make_sample(i));
    kill_self();
  });
  EXPECT_TRUE(fs::exists(path("shard-00000")));
  EXPECT_FALSE(has_index(dir_));  // the shard was never finished
  {
    ShardWriter writer(dir_, {.batch = 4});
    ASSERT_EQ(writer.adopted().size(), 1u);
    EXPECT_EQ(writer.adopted()[0].file, "shard-00000");
    EXPECT_EQ(writer.adopted()[0].samples, 8);
    EXPECT_EQ(read_index(dir_).samples(), 8);  // listed right away
    for (int i = 8; i < 12; ++i) writer.add(make_sample(i));
  }
  const ShardIndex index = read_index(dir_);
  ASSERT_EQ(index.shards.size(), 2u);
  EXPECT_EQ(index.shards[1].file, "shard-00001");
  const ShardReader reader(dir_);
  ASSERT_EQ(reader.size(), 12);
  for (int i = 0; i < 12; ++i) expect_same(reader.get(i), make_sample(i));
}

TEST_F(Shards, AnUnfinishedShardWithNoCommittedRecordIsDropped) {
  in_killed_child([&] {
    ShardWriter writer(dir_, {.batch = 4});
    for (int i = 0; i < 3; ++i) writer.add(make_sample(i));  // nothing committed
    kill_self();
  });
  ASSERT_TRUE(fs::exists(path("shard-00000")));
  ShardWriter writer(dir_);
  EXPECT_TRUE(writer.adopted().empty());
  EXPECT_FALSE(fs::exists(path("shard-00000")));
  writer.add(make_sample(0));
  writer.finish();
  EXPECT_EQ(read_index(dir_).shards[0].file, "shard-00001");  // numbers are not reused
}

TEST_F(Shards, FlushCommitsAndFinishIsIdempotent) {
  in_killed_child([&] {
    ShardWriter writer(dir_, {.batch = 100});
    for (int i = 0; i < 3; ++i) writer.add(make_sample(i));
    writer.flush();
    writer.add(make_sample(3));
    kill_self();
  });
  ShardWriter writer(dir_);
  ASSERT_EQ(writer.adopted().size(), 1u);
  EXPECT_EQ(writer.adopted()[0].samples, 3);
  writer.finish();
  writer.finish();
  writer.add(make_sample(3));  // after finish: a new shard
  writer.finish();
  EXPECT_EQ(read_index(dir_).shards.size(), 2u);
  EXPECT_EQ(ShardReader(dir_).ids(), (std::vector<std::string>{"s0", "s1", "s2", "s3"}));
}

TEST_F(Shards, OneWriterPerPrefixAndPrefixesShareTheIndex) {
  ShardWriter a(dir_, {.prefix = "shard-p0of2"});
  const std::string second = error_of([&] { ShardWriter again(dir_, {.prefix = "shard-p0of2"}); });
  EXPECT_NE(second.find("locked by another process"), std::string::npos) << second;
  EXPECT_NE(second.find("another writer is writing shard-p0of2-* shards in " + dir_), std::string::npos) << second;
  ShardWriter b(dir_, {.prefix = "shard-p1of2"});
  b.add(make_sample(1));
  b.finish();
  a.add(make_sample(0));
  a.finish();
  const ShardIndex index = read_index(dir_);
  ASSERT_EQ(index.shards.size(), 2u);
  EXPECT_EQ(index.shards[0].file, "shard-p0of2-00000");  // sorted by name, not by finishing time
  EXPECT_EQ(index.shards[1].file, "shard-p1of2-00000");
  EXPECT_EQ(ShardReader(dir_).ids(), (std::vector<std::string>{"s0", "s1"}));
}

TEST_F(Shards, IdsOfRecordsWithoutAnId) {
  {
    ShardWriter writer(dir_);
    Sample text;
    text.set_kind(Sample::TEXT);
    text.add_conversations()->set_value("no id");
    writer.add(text);
    writer.add(make_sample(7));
  }
  EXPECT_EQ(ShardReader(dir_).ids(), (std::vector<std::string>{"", "s7"}));
}

TEST_F(Shards, ThreadsReadConcurrently) {
  {
    ShardWriter writer(dir_, {.max_shard_bytes = 20000, .batch = 3});
    for (int i = 0; i < 24; ++i) writer.add(make_sample(i, 2, 3000));
  }
  const ShardReader reader(dir_);
  ASSERT_GT(reader.index().shards.size(), 3u);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round)
        for (int i = t; i < 24; i += 2)
          if (reader.get(i).SerializeAsString() != make_sample(i, 2, 3000).SerializeAsString()) ++mismatches[t];
    });
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches, (std::vector<int>{0, 0, 0, 0}));
}

TEST_F(Shards, IndexErrorsNameTheFileAndField) {
  const std::string index = path("index.json");
  fs::create_directories(dir_);
  EXPECT_EQ(error_of([&] { read_index(dir_); }),
            index + ": cannot open (not a shard directory, or bvllm_prep has not finished a shard yet)");
  EXPECT_EQ(error_of([&] { ShardReader reader(dir_); }),
            index + ": cannot open (not a shard directory, or bvllm_prep has not finished a shard yet)");
  auto with = [&](const std::string& text) {
    std::ofstream(index) << text;
    return error_of([&] { read_index(dir_); });
  };
  EXPECT_EQ(with(R"({"format": "bvllm-shards", "version": 1, "shards": [)").rfind(index + ": invalid JSON: ", 0), 0u);
  EXPECT_EQ(with(R"([])"), index + ": expected a JSON object");
  EXPECT_EQ(with(R"({"version": 1, "shards": []})"), index + ": no \"format\"");
  EXPECT_EQ(with(R"({"format": "mds", "version": 1, "shards": []})"),
            index + ": \"format\" must be \"bvllm-shards\", got \"mds\"");
  EXPECT_EQ(with(R"({"format": "bvllm-shards", "version": 2, "shards": []})"),
            index + ": \"version\" 2 is not supported (expected 1)");
  EXPECT_EQ(with(R"({"format": "bvllm-shards", "version": 1, "shards": {}})"), index + ": \"shards\" must be an array");
  EXPECT_EQ(with(R"({"format": "bvllm-shards", "version": 1, "shards": [{"file": "a", "samples": -1, "bytes": 0}]})"),
            index + ": shards[0]: \"samples\" must be a non-negative integer, got -1");
  EXPECT_EQ(with(R"({"format": "bvllm-shards", "version": 1, "shards": [{"file": "a", "samples": 1}]})"),
            index + ": shards[0]: no \"bytes\"");
  EXPECT_EQ(with(R"({"format": "bvllm-shards", "version": 1, "shards": [{"file": "../a", "samples": 1, "bytes": 1}]})"),
            index + ": shards[0]: \"file\" must be a file name in the directory, got \"../a\"");
  EXPECT_EQ(
      with(
          R"({"format": "bvllm-shards", "version": 1, "shards": [{"file": "a", "samples": 1, "bytes": 1}, {"file": "a", "samples": 1, "bytes": 1}]})"),
      index + ": shards[1]: \"a\" is listed twice");
  EXPECT_EQ(with(R"({"format": "bvllm-shards", "version": 1, "shards": []})"), "(no error)");
}

TEST_F(Shards, ReaderChecksTheIndexAgainstTheShards) {
  {
    ShardWriter writer(dir_);
    for (int i = 0; i < 3; ++i) writer.add(make_sample(i));
  }
  const std::string index = path("index.json");
  std::ofstream(index)
      << R"({"format": "bvllm-shards", "version": 1, "shards": [{"file": "shard-00000", "samples": 4, "bytes": 1}]})";
  EXPECT_EQ(error_of([&] { ShardReader reader(dir_); }),
            path("shard-00000") + ": holds 3 records but " + index + " says 4");
  std::ofstream(index)
      << R"({"format": "bvllm-shards", "version": 1, "shards": [{"file": "shard-00009", "samples": 3, "bytes": 1}]})";
  EXPECT_EQ(error_of([&] { ShardReader reader(dir_); }), path("shard-00009") + ": listed in " + index + " but missing");
  // A shard file that is not LMDB: the failing call and the file are named.
  std::ofstream(path("shard-00009")) << std::string(10000, 'x');
  const std::string corrupt = error_of([&] { ShardReader reader(dir_); });
  EXPECT_EQ(corrupt.rfind(path("shard-00009") + ": mdb_env_open(", 0), 0u) << corrupt;
  EXPECT_NE(corrupt.find("MDB_INVALID"), std::string::npos) << corrupt;
}

TEST_F(Shards, WriterRejectsBadOptions) {
  EXPECT_EQ(error_of([&] { ShardWriter writer(dir_, {.batch = 0}); }), "ShardWriter: batch must be positive, got 0");
  EXPECT_EQ(error_of([&] { ShardWriter writer(dir_, {.prefix = "a/b"}); }),
            "ShardWriter: prefix must be a plain file name, got \"a/b\"");
  fs::create_directories(dir_);
  std::ofstream(path("file")) << "x";
  const std::string not_dir = error_of([&] { ShardWriter writer(path("file")); });
  EXPECT_EQ(not_dir.rfind(path("file") + ": cannot create the shard directory", 0), 0u) << not_dir;
}

}  // namespace
}  // namespace bvllm::data
