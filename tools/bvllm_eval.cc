// bvllm_eval: the accuracy of a trained B-VLLM on held-out question answering, per question type.
//
//   build/bin/bvllm_eval --checkpoint runs/tiny_stage2/checkpoints --shards runs/shards/test
//       --manifest runs/synth/test.json --out runs/tiny_stage2/eval.json      (one command line)
//
// CHECKPOINT is what load_trained_model takes (tools/train/inference.h): a step directory, a
// checkpoint directory (its latest step) or a run directory. Every sample of the shards (bvllm_prep
// of the manifest) is loaded as the training loader loads it under the checkpoint's recipe
// (frames, image size, pad, stage template), frame selection runs noise-free, and one forward pass
// decides: a sample is correct when the argmax at every supervised position equals the label up to
// and including the answer's end token (teacher-forced greedy; tools/train/inference.h
// check_answer), which holds exactly when greedy generation would produce the answer and stop.
//
// The manifest (a JSON array or JSONL, as bvllm_prep reads) gives each sample's question "type"
// and "answer" (records matched to samples by "id"). Chance for a type is 1 / the number of
// distinct answers of that type in the manifest. The table goes to stdout, progress to stderr,
// and --out gets {"samples", "correct", "accuracy", "chance", "types": {TYPE: {"n", "correct",
// "accuracy", "chance"}}, "predictions": [{"id", "type", "answer", "predicted", "correct"}], ...}.
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "data/loader.h"
#include "runtime/autograd.h"
#include "runtime/error.h"
#include "tools/train/inference.h"
#include "tools/train/model_builder.h"

DEFINE_string(checkpoint, "", "a bvllm_train checkpoint: step directory, checkpoint directory or run directory");
DEFINE_string(shards, "", "the held-out shards (bvllm_prep of --manifest)");
DEFINE_string(manifest, "", "the held-out manifest with per-record \"type\" and \"answer\" (bvllm_synth's test.json)");
DEFINE_string(out, "", "write the results here as JSON");
DEFINE_int64(limit, 0, "evaluate the first N samples of the shards only (0: all)");
DEFINE_int64(batch, 1, "samples per forward pass");
DEFINE_string(tokenizer, "", "tokenizer.json instead of the recipe's model.tokenizer");
DEFINE_string(bert_vocab, "", "vocab.txt instead of the recipe's model.qformer.bert_vocab");
DEFINE_int32(threads, 0, "CPU threads (0: OpenMP's default)");
DEFINE_int64(gumbel_seed, -1,
             "draw frame selection's Gumbel noise from this seed, as the released code does at inference "
             "(-1: the noise-free softmax)");
DEFINE_double(progress_seconds, 0, "seconds between progress lines (0: 1 on a terminal, 10 otherwise)");

namespace {

namespace fs = std::filesystem;
using bvllm::Error;
using bvllm::str_cat;
using bvllm::Tensor;
using json = nlohmann::json;

struct Record {
  std::string type, answer;
  bool has_type = false, has_answer = false;
  int64_t index = 0;
};

struct Manifest {
  std::map<std::string, Record> by_id;
  std::vector<std::string> types;                        // in order of first appearance
  std::map<std::string, std::set<std::string>> answers;  // type -> distinct answers
};

// Records of a JSON array or JSONL (the first non-blank character decides, as data/manifest.h).
std::vector<json> read_records(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BVLLM_REQUIRE(in, path, ": cannot open the manifest");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const size_t first = text.find_first_not_of(" \t\r\n");
  BVLLM_REQUIRE(first != std::string::npos, path, ": the manifest is empty");
  std::vector<json> records;
  if (text[first] == '[') {
    const json all = json::parse(text, nullptr, /*allow_exceptions=*/false);
    BVLLM_REQUIRE(all.is_array(), path, ": not a JSON array of records");
    records.assign(all.begin(), all.end());
  } else {
    std::istringstream lines(text);
    std::string line;
    for (int64_t n = 1; std::getline(lines, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
      BVLLM_REQUIRE(!record.is_discarded(), path, ":", n, ": not a JSON record");
      records.push_back(std::move(record));
    }
  }
  return records;
}

Manifest read_manifest(const std::string& path) {
  Manifest m;
  const std::vector<json> records = read_records(path);
  for (size_t i = 0; i < records.size(); ++i) {
    const json& r = records[i];
    BVLLM_REQUIRE(r.is_object(), path, ": record ", i, " is not a JSON object");
    // The id rule of bvllm_prep's manifests: a string, an integer as its decimal text, or absent
    // (the record's index).
    std::string id = std::to_string(i);
    if (r.contains("id")) {
      const json& j = r["id"];
      BVLLM_REQUIRE(j.is_string() || j.is_number_integer(), path, ": record ", i,
                    ": field \"id\" must be a string or an integer");
      id = j.is_string() ? j.get<std::string>() : std::to_string(j.get<int64_t>());
    }
    Record record;
    record.index = static_cast<int64_t>(i);
    for (auto [field, value, has] : {std::tuple{"type", &record.type, &record.has_type},
                                     std::tuple{"answer", &record.answer, &record.has_answer}}) {
      if (!r.contains(field)) continue;
      BVLLM_REQUIRE(r[field].is_string(), path, ": record ", i, " (id \"", id, "\"): field \"", field,
                    "\" must be a string");
      *value = r[field].get<std::string>();
      *has = true;
    }
    if (record.has_type) {
      if (!m.answers.contains(record.type)) m.types.push_back(record.type);
      if (record.has_answer) m.answers[record.type].insert(record.answer);
    }
    m.by_id.emplace(id, std::move(record));  // the first record of an id, as bvllm_prep keeps it
  }
  return m;
}

std::string percent(double fraction) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(1) << 100.0 * fraction << "%";
  return out.str();
}

std::string format_seconds(double s) {
  std::ostringstream out;
  if (s >= 60)
    out << static_cast<int64_t>(s) / 60 << "m" << std::setw(2) << std::setfill('0') << static_cast<int64_t>(s) % 60
        << "s";
  else
    out << static_cast<int64_t>(s + 0.5) << "s";
  return out.str();
}

struct TypeStats {
  int64_t n = 0, correct = 0;
  double chance = 0;
};

int run() {
  BVLLM_REQUIRE(!FLAGS_checkpoint.empty(), "--checkpoint is required");
  BVLLM_REQUIRE(!FLAGS_shards.empty(), "--shards is required (bvllm_prep of the held-out manifest)");
  BVLLM_REQUIRE(!FLAGS_manifest.empty(), "--manifest is required (records with \"type\" and \"answer\")");
  BVLLM_REQUIRE(FLAGS_limit >= 0, "--limit must be >= 0, got ", FLAGS_limit);
  BVLLM_REQUIRE(FLAGS_batch >= 1, "--batch must be >= 1, got ", FLAGS_batch);
  if (FLAGS_threads > 0) omp_set_num_threads(FLAGS_threads);

  const Manifest manifest = read_manifest(FLAGS_manifest);
  bvllm::train::LoadedModel m = bvllm::train::load_trained_model(
      FLAGS_checkpoint, {.tokenizer = FLAGS_tokenizer, .bert_vocab = FLAGS_bert_vocab});
  bvllm::data::LoaderOptions lo = bvllm::train::loader_options(m.recipe);
  lo.shards = FLAGS_shards;
  lo.prefetch_threads = 0;
  const bvllm::data::DataLoader loader(lo, m.tokenizers.qwen, m.tokenizers.bert);
  const int64_t total = FLAGS_limit > 0 ? std::min(FLAGS_limit, loader.reader().size()) : loader.reader().size();
  const std::vector<int64_t> end_ids = bvllm::train::end_token_ids(m.tokenizers.qwen);
  std::cerr << "bvllm_eval: " << m.checkpoint << " (step " << m.step << ", stage " << m.recipe.data().stage() << "), "
            << total << " samples of " << FLAGS_shards << "\n";

  std::map<std::string, TypeStats> stats;
  json predictions = json::array();
  int64_t done = 0, correct = 0;
  const double every = FLAGS_progress_seconds > 0 ? FLAGS_progress_seconds : (isatty(STDERR_FILENO) ? 1.0 : 10.0);
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  auto seconds = [](auto from) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - from).count();
  };
  bvllm::NoGradGuard no_grad;
  bvllm::Generator gumbel{.seed = static_cast<uint64_t>(std::max<int64_t>(FLAGS_gumbel_seed, 0))};
  const bvllm::layers::BvllmForwardOptions forward_options{.generator = FLAGS_gumbel_seed >= 0 ? &gumbel : nullptr,
                                                           .noise_free = FLAGS_gumbel_seed < 0};
  for (int64_t first = 0; first < total; first += FLAGS_batch) {
    std::vector<bvllm::data::LoadedSample> loaded;
    std::vector<bvllm::layers::BvllmSample> batch;
    for (int64_t i = first; i < std::min(total, first + FLAGS_batch); ++i) {
      loaded.push_back(loader.load(i));
      batch.push_back(bvllm::train::model_sample(loaded.back()));
    }
    const bvllm::layers::BvllmOutput out = m.model->forward(batch, forward_options);
    for (size_t b = 0; b < loaded.size(); ++b) {
      const std::string& id = loaded[b].id;
      auto it = manifest.by_id.find(id);
      BVLLM_REQUIRE(it != manifest.by_id.end(), FLAGS_shards, ": sample ", loaded[b].index, " \"", id,
                    "\" has no record in ", FLAGS_manifest);
      const Record& record = it->second;
      BVLLM_REQUIRE(record.has_type && record.has_answer, FLAGS_manifest, ": record ", record.index, " (id \"", id,
                    "\"): no \"", record.has_type ? "answer" : "type",
                    "\" field (bvllm_eval groups by question type; bvllm_synth's test.json has both)");
      const int64_t length = out.lengths[b];
      const bvllm::train::AnswerCheck check =
          bvllm::train::check_answer(out.logits.select(0, static_cast<int64_t>(b)).narrow(0, 0, length),
                                     out.labels.select(0, static_cast<int64_t>(b)).narrow(0, 0, length), end_ids);
      BVLLM_REQUIRE(!check.expected.empty(), FLAGS_shards, ": sample ", loaded[b].index, " \"", id,
                    "\" has no supervised answer tokens");
      TypeStats& s = stats[record.type];
      s.n += 1;
      s.correct += check.correct ? 1 : 0;
      correct += check.correct ? 1 : 0;
      const std::vector<int32_t> predicted(check.predicted.begin(), check.predicted.end());
      predictions.push_back({{"id", id},
                             {"type", record.type},
                             {"answer", record.answer},
                             {"predicted", m.tokenizers.qwen.decode(predicted, /*skip_special_tokens=*/true)},
                             {"correct", check.correct}});
      ++done;
    }
    if (seconds(last_report) >= every || done == total) {
      last_report = std::chrono::steady_clock::now();
      const double elapsed = seconds(start), rate = done / std::max(elapsed, 1e-9);
      std::cerr << "bvllm_eval: " << done << "/" << total << " (" << percent(static_cast<double>(done) / total) << "), "
                << std::fixed << std::setprecision(1) << rate << " samples/s, ETA "
                << format_seconds((total - done) / std::max(rate, 1e-9)) << ", accuracy so far "
                << percent(static_cast<double>(correct) / done) << std::defaultfloat << "\n";
    }
  }

  // The table, in the manifest's order of types.
  std::cout << std::left << std::setw(12) << "type" << std::right << std::setw(8) << "n" << std::setw(10) << "correct"
            << std::setw(10) << "accuracy" << std::setw(10) << "chance"
            << "\n";
  json types = json::object();
  double chance_sum = 0;
  for (const std::string& type : manifest.types) {
    auto it = stats.find(type);
    if (it == stats.end()) continue;
    TypeStats& s = it->second;
    s.chance = 1.0 / static_cast<double>(manifest.answers.at(type).size());
    chance_sum += s.chance * static_cast<double>(s.n);
    const double accuracy = static_cast<double>(s.correct) / static_cast<double>(s.n);
    std::cout << std::left << std::setw(12) << type << std::right << std::setw(8) << s.n << std::setw(10) << s.correct
              << std::setw(10) << percent(accuracy) << std::setw(10) << percent(s.chance) << "\n";
    types[type] = {{"n", s.n}, {"correct", s.correct}, {"accuracy", accuracy}, {"chance", s.chance}};
  }
  const double accuracy = done > 0 ? static_cast<double>(correct) / static_cast<double>(done) : 0.0;
  const double chance = done > 0 ? chance_sum / static_cast<double>(done) : 0.0;
  std::cout << std::left << std::setw(12) << "overall" << std::right << std::setw(8) << done << std::setw(10) << correct
            << std::setw(10) << percent(accuracy) << std::setw(10) << percent(chance) << "\n";
  std::cout.flush();
  BVLLM_REQUIRE(std::cout.good(), "cannot write to stdout");

  if (!FLAGS_out.empty()) {
    const json result = {{"checkpoint", m.checkpoint}, {"step", m.step},   {"shards", FLAGS_shards},
                         {"manifest", FLAGS_manifest}, {"samples", done},  {"correct", correct},
                         {"accuracy", accuracy},       {"chance", chance}, {"types", types},
                         {"predictions", predictions}};
    const fs::path out(FLAGS_out);
    if (out.has_parent_path()) fs::create_directories(out.parent_path());
    const std::string tmp = FLAGS_out + ".tmp";
    {
      std::ofstream file(tmp, std::ios::binary | std::ios::trunc);
      BVLLM_REQUIRE(file, tmp, ": cannot write");
      file << result.dump(2) << "\n";
      file.flush();
      BVLLM_REQUIRE(file, tmp, ": write failed");
    }
    fs::rename(tmp, out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "bvllm_eval --checkpoint=CKPT --shards=DIR --manifest=test.json [--out=eval.json] [--limit=N] [--batch=B]");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  try {
    BVLLM_REQUIRE(argc == 1, "unexpected argument '", argv[1], "'");
    return run();
  } catch (const std::exception& e) {
    std::cerr << "bvllm_eval: " << e.what() << "\n";
    return 1;
  }
}
