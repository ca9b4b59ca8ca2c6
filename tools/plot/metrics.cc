#include "tools/plot/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string_view>

#include "runtime/error.h"

namespace bvllm::plot {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Python's json.dumps writes non-finite floats as the bare words NaN, Infinity and -Infinity,
// which are not JSON; outside strings, they become null.
std::string python_non_finite_to_null(const std::string& line) {
  std::string out;
  bool in_string = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < line.size()) out += line[++i];
      if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const std::string_view word : {"-Infinity", "Infinity", "NaN"}) {
      if (line.compare(i, word.size(), word) == 0) {
        out += "null";
        i += word.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

// nlohmann's message without its "[json.exception.parse_error.101] " prefix; its "line 1" is
// always 1 here, so only the column is kept.
std::string parse_error_text(const std::exception& e) {
  std::string text = e.what();
  if (const size_t end = text.find("] "); text.starts_with("[json.exception.") && end != std::string::npos)
    text = text.substr(end + 2);
  if (const size_t at = text.find("at line 1, column "); at != std::string::npos)
    text.replace(at, std::string_view("at line 1, column ").size(), "at column ");
  return text;
}

std::string json_text(const nlohmann::json& value) {
  std::string text = value.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

// The value of `key` in `record`: NaN for null, nullopt when absent.
std::optional<double> number_field(const nlohmann::json& record, const char* key, const std::string& where) {
  const auto it = record.find(key);
  if (it == record.end()) return std::nullopt;
  if (it->is_null()) return kNaN;
  BVLLM_REQUIRE(it->is_number(), where, ": \"", key, "\" must be a number or null, got ", json_text(*it));
  const double value = it->get<double>();
  return std::isfinite(value) ? value : kNaN;
}

int64_t step_field(const nlohmann::json& record, const std::string& where) {
  const auto it = record.find("step");
  BVLLM_REQUIRE(it != record.end(), where, ": no \"step\"");
  const bool integral = it->is_number_integer() ||
                        (it->is_number_float() && std::isfinite(it->get<double>()) &&
                         it->get<double>() == std::floor(it->get<double>()) && std::abs(it->get<double>()) < 9e15);
  BVLLM_REQUIRE(integral && it->get<double>() >= 0, where, ": \"step\" must be an integer >= 0, got ", json_text(*it));
  return it->is_number_float() ? static_cast<int64_t>(it->get<double>()) : it->get<int64_t>();
}

// Drops the points at `step` and later; returns how many.
int64_t drop_from(std::vector<MetricPoint>* series, int64_t step) {
  const auto first = std::find_if(series->begin(), series->end(), [&](const MetricPoint& p) { return p.step >= step; });
  const int64_t dropped = series->end() - first;
  series->erase(first, series->end());
  return dropped;
}

std::string run_name(const std::string& path) {
  const std::filesystem::path p(path);
  const std::string parent = p.parent_path().filename().string();
  if (p.filename() == "metrics.jsonl" && !parent.empty() && parent != "." && parent != "..") return parent;
  return p.stem().string();
}

int64_t first_or(const std::vector<MetricPoint>& s, int64_t fallback) { return s.empty() ? fallback : s.front().step; }
int64_t last_or(const std::vector<MetricPoint>& s, int64_t fallback) { return s.empty() ? fallback : s.back().step; }

}  // namespace

int64_t RunMetrics::first_step() const {
  if (loss.empty() && lr.empty() && eval_loss.empty()) return 0;
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  return std::min({first_or(loss, kMax), first_or(lr, kMax), first_or(eval_loss, kMax)});
}

int64_t RunMetrics::last_step() const { return std::max({last_or(loss, 0), last_or(lr, 0), last_or(eval_loss, 0)}); }

RunMetrics parse_metrics(std::istream& in, const std::string& path) {
  RunMetrics run;
  run.path = path;
  run.name = run_name(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Training lines kept so far, by step: the number of lines a resume drops.
  std::vector<int64_t> train_steps;
  int64_t line_number = 0;
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\n', begin);
    const bool has_newline = end != std::string::npos;
    if (!has_newline) end = text.size();
    std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = str_cat(path, ":", line_number);

    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      try {
        record = nlohmann::json::parse(python_non_finite_to_null(line));
      } catch (const nlohmann::json::parse_error&) {
        if (!has_newline) {
          run.incomplete_last_line = true;
          break;
        }
        throw Error(str_cat(where, ": not JSON (", parse_error_text(e), ")"));
      }
    }
    BVLLM_REQUIRE(record.is_object(), where, ": expected a JSON object like {\"step\": 1, \"loss\": 2.5}, got ",
                  json_text(record));
    const std::optional<double> loss = number_field(record, "loss", where);
    const std::optional<double> lr = number_field(record, "lr", where);
    const std::optional<double> eval_loss = number_field(record, "eval_loss", where);
    if (!loss && !lr && !eval_loss) continue;
    const int64_t step = step_field(record, where);
    ++run.lines;

    if (loss || lr) {
      if (!train_steps.empty() && step <= train_steps.back()) {
        const auto first = std::lower_bound(train_steps.begin(), train_steps.end(), step);
        run.replaced += train_steps.end() - first;
        train_steps.erase(first, train_steps.end());
        drop_from(&run.loss, step);
        drop_from(&run.lr, step);
        run.replaced += drop_from(&run.eval_loss, step);
      }
      train_steps.push_back(step);
      if (loss) run.loss.push_back({step, *loss});
      if (lr && std::isfinite(*lr)) run.lr.push_back({step, *lr});
    }
    if (eval_loss) {
      run.replaced += drop_from(&run.eval_loss, step);
      if (std::isfinite(*eval_loss)) run.eval_loss.push_back({step, *eval_loss});
    }
  }
  return run;
}

RunMetrics read_metrics(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BVLLM_REQUIRE(in, path, ": cannot open (", std::strerror(errno), ")");
  return parse_metrics(in, path);
}

}  // namespace bvllm::plot
