#include "recipes/recipe.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "runtime/error.h"

namespace bvllm::recipes {
namespace {

namespace pb = google::protobuf;

// The defaults of fields a recipe leaves out, as recipe.proto documents them. Only fields whose
// default is not proto3's zero appear here (and they are `optional` in the schema, so a recipe can
// still set them to zero). Qwen2Sizes defaults are filled separately: writing them here would
// select the `llm` member of the model's oneof.
constexpr const char* kDefaults = R"pb(
  model {
    vision { image_size: 336 patch_size: 14 width: 1408 depth: 39 num_heads: 16 mlp_ratio: 4.3637 }
    qformer {
      hidden_size: 768
      num_layers: 12
      num_heads: 12
      intermediate_size: 3072
      cross_attention_freq: 2
      init_std: 0.02
    }
    temporal_queries: 16
    spatial_queries: 32
    token_budget: 576
    frames_per_sample: 16
    gumbel_tau: 0.5
  }
  optimizer { beta1: 0.9 beta2: 0.999 eps: 1e-8 clip_grad_norm: 1.0 }
  batch { micro_batch: 1 grad_accum: 1 }
  parallel { tp: 1 pp: 1 bucket_elements: 16777216 comm_timeout_s: 600 }
  data { max_length: 2048 }
  logging { every_steps: 1 }
  seed: 42
)pb";

// The field a line of recipe text sets ("  lr: 2e-4  # peak" -> "lr"), or "" when it sets none.
std::string field_on_line(const std::string& text, int line) {
  std::istringstream in(text);
  std::string current;
  for (int i = 0; i <= line && std::getline(in, current); ++i) {
  }
  static const std::regex field(R"(^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:)");
  std::smatch m;
  return std::regex_search(current, m, field) ? m[1].str() : std::string();
}

// Keeps the first error of a parse, 1-based, as "SOURCE:LINE:COL: message"; protobuf's message
// names the field for unknown and repeated fields but not for a value of the wrong type ("Expected
// integer, got: ..."), so the field set on that line is named too.
class FirstError : public pb::io::ErrorCollector {
 public:
  FirstError(std::string source, const std::string& text) : source_(std::move(source)), text_(text) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!message_.empty()) return;
    const std::string field = field_on_line(text_, line);
    const bool named = field.empty() || message.find("\"" + field + "\"") != std::string::npos;
    message_ = str_cat(source_, ":", line + 1, ":", column + 1, ": ", named ? "" : "field " + field + ": ", message);
  }
  const std::string& message() const { return message_; }

 private:
  std::string source_;
  const std::string& text_;
  std::string message_;
};

Recipe parse_text(const std::string& text, const std::string& source) {
  Recipe recipe;
  FirstError errors(source, text);
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &recipe)) {
    throw Error(errors.message().empty() ? str_cat(source, ": not a valid recipe") : errors.message());
  }
  return recipe;
}

Recipe with_defaults(const Recipe& parsed) {
  static const Recipe defaults = parse_text(kDefaults, "recipes/recipe.cc (defaults)");
  Recipe recipe = defaults;
  recipe.MergeFrom(parsed);  // set fields win; optional fields keep an explicit zero
  if (recipe.model().has_llm()) {
    Qwen2Sizes* llm = recipe.mutable_model()->mutable_llm();
    if (!llm->has_rope_theta()) llm->set_rope_theta(1e6);
    if (!llm->has_rms_norm_eps()) llm->set_rms_norm_eps(1e-6);
  }
  return recipe;
}

// The field names of `type`, for "no field X in Y (fields: ...)".
std::string field_names(const pb::Descriptor* type) {
  std::string names;
  for (int i = 0; i < type->field_count(); ++i) names += (i ? ", " : "") + type->field(i)->name();
  return names;
}

template <typename T>
T parse_integer(const std::string& value, const pb::FieldDescriptor* field) {
  T out{};
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), out);
  BVLLM_REQUIRE(ec == std::errc() && end == value.data() + value.size(), "\"", value, "\" is not a valid ",
                field->cpp_type_name(), " for ", field->full_name());
  return out;
}

double parse_double(const std::string& value, const pb::FieldDescriptor* field) {
  // strtod, not from_chars: it also takes "inf"/"nan", which validate() then names.
  char* end = nullptr;
  double out = value.empty() ? 0 : std::strtod(value.c_str(), &end);
  BVLLM_REQUIRE(!value.empty() && end == value.c_str() + value.size(), "\"", value, "\" is not a valid number for ",
                field->full_name());
  return out;
}

bool parse_bool(const std::string& value, const pb::FieldDescriptor* field) {
  if (value == "true" || value == "1") return true;
  if (value == "false" || value == "0") return false;
  throw Error(str_cat("\"", value, "\" is not a bool (true, false, 1, 0) for ", field->full_name()));
}

const pb::EnumValueDescriptor* parse_enum(const std::string& value, const pb::FieldDescriptor* field) {
  const pb::EnumDescriptor* type = field->enum_type();
  if (const pb::EnumValueDescriptor* found = type->FindValueByName(value)) return found;
  std::string names;
  for (int i = 0; i < type->value_count(); ++i) names += (i ? ", " : "") + type->value(i)->name();
  throw Error(str_cat("\"", value, "\" is not a value of ", type->full_name(), " for ", field->full_name(),
                      " (values: ", names, ")"));
}

// Sets (or, for repeated fields, adds) one value of a scalar field from its text.
void set_value(pb::Message* message, const pb::FieldDescriptor* field, const std::string& value) {
  const pb::Reflection* r = message->GetReflection();
  const bool rep = field->is_repeated();
  using F = pb::FieldDescriptor;
  switch (field->cpp_type()) {
    case F::CPPTYPE_INT32: {
      auto v = parse_integer<int32_t>(value, field);
      rep ? r->AddInt32(message, field, v) : r->SetInt32(message, field, v);
      break;
    }
    case F::CPPTYPE_INT64: {
      auto v = parse_integer<int64_t>(value, field);
      rep ? r->AddInt64(message, field, v) : r->SetInt64(message, field, v);
      break;
    }
    case F::CPPTYPE_UINT32: {
      auto v = parse_integer<uint32_t>(value, field);
      rep ? r->AddUInt32(message, field, v) : r->SetUInt32(message, field, v);
      break;
    }
    case F::CPPTYPE_UINT64: {
      auto v = parse_integer<uint64_t>(value, field);
      rep ? r->AddUInt64(message, field, v) : r->SetUInt64(message, field, v);
      break;
    }
    case F::CPPTYPE_DOUBLE: {
      double v = parse_double(value, field);
      rep ? r->AddDouble(message, field, v) : r->SetDouble(message, field, v);
      break;
    }
    case F::CPPTYPE_FLOAT: {
      auto v = static_cast<float>(parse_double(value, field));
      rep ? r->AddFloat(message, field, v) : r->SetFloat(message, field, v);
      break;
    }
    case F::CPPTYPE_BOOL: {
      bool v = parse_bool(value, field);
      rep ? r->AddBool(message, field, v) : r->SetBool(message, field, v);
      break;
    }
    case F::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* v = parse_enum(value, field);
      rep ? r->AddEnum(message, field, v) : r->SetEnum(message, field, v);
      break;
    }
    case F::CPPTYPE_STRING: rep ? r->AddString(message, field, value) : r->SetString(message, field, value); break;
    case F::CPPTYPE_MESSAGE:
      throw Error(str_cat(field->full_name(), " is a message: set one of its fields (",
                          field_names(field->message_type()), ")"));
  }
}

// Applies one "FIELD.PATH=VALUE" to `recipe`.
void apply_override(Recipe& recipe, const std::string& override_text) {
  const size_t eq = override_text.find('=');
  BVLLM_REQUIRE(eq != std::string::npos && eq > 0, "expected FIELD.PATH=VALUE");
  const std::string path = override_text.substr(0, eq);
  const std::string value = override_text.substr(eq + 1);

  pb::Message* message = &recipe;
  std::istringstream parts(path);
  std::string name;
  std::getline(parts, name, '.');
  while (true) {
    const pb::Descriptor* type = message->GetDescriptor();
    const pb::FieldDescriptor* field = type->FindFieldByName(name);
    BVLLM_REQUIRE(field != nullptr, "no field \"", name, "\" in ", type->full_name(), " (fields: ", field_names(type),
                  ")");
    std::string next;
    if (!std::getline(parts, next, '.')) {  // the last component: set it
      if (!field->is_repeated()) {
        set_value(message, field, value);
      } else {
        BVLLM_REQUIRE(field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE, field->full_name(),
                      " is a repeated message and cannot be set with --set");
        message->GetReflection()->ClearField(message, field);
        std::istringstream items(value);
        for (std::string item; std::getline(items, item, ',');) set_value(message, field, item);
      }
      return;
    }
    BVLLM_REQUIRE(field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE && !field->is_repeated(),
                  field->full_name(), " is not a message, so it has no field \"", next, "\"");
    message = message->GetReflection()->MutableMessage(message, field);
    name = next;
  }
}

// Validation helpers: each failure is "SOURCE: FIELD: message".
struct Checker {
  const std::string& source;
  void require(bool ok, const std::string& field, const std::string& message) const {
    BVLLM_REQUIRE(ok, source, ": ", field, ": ", message);
  }
  void positive(double v, const std::string& field) const {
    require(std::isfinite(v) && v > 0, field, str_cat("must be > 0, got ", v));
  }
  void exists(const std::string& path, const std::string& field) const {
    require(std::filesystem::exists(path), field, str_cat("\"", path, "\" does not exist"));
  }
};

}  // namespace

Recipe parse_recipe(const std::string& text, const std::string& source, const std::vector<std::string>& overrides) {
  Recipe recipe = with_defaults(parse_text(text, source));
  for (const std::string& o : overrides) {
    try {
      apply_override(recipe, o);
    } catch (const Error& e) {
      throw Error(str_cat(source, ": --set ", o, ": ", e.what()));
    }
  }
  return recipe;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  BVLLM_REQUIRE(in, path, ": cannot open the recipe");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_recipe(text.str(), path, overrides);
}

void validate(const Recipe& recipe, const std::string& source, const ValidateOptions& options) {
  const Checker c{source};
  const bool files = options.check_files;

  // Length.
  c.require(recipe.length_case() != Recipe::LENGTH_NOT_SET, "steps", "set steps or epochs");
  if (recipe.has_steps()) c.positive(static_cast<double>(recipe.steps()), "steps");
  if (recipe.has_epochs()) c.positive(recipe.epochs(), "epochs");

  // Model.
  const ModelConfig& m = recipe.model();
  c.require(m.llm_source_case() != ModelConfig::LLM_SOURCE_NOT_SET, "model.llm_dir",
            "set model.llm_dir (a Hugging Face Qwen2 directory) or model.llm (inline sizes)");
  if (m.has_llm_dir() && files) c.exists(m.llm_dir(), "model.llm_dir");
  if (m.has_llm()) {
    const Qwen2Sizes& l = m.llm();
    c.positive(static_cast<double>(l.vocab_size()), "model.llm.vocab_size");
    c.positive(static_cast<double>(l.hidden_size()), "model.llm.hidden_size");
    c.positive(static_cast<double>(l.intermediate_size()), "model.llm.intermediate_size");
    c.positive(static_cast<double>(l.num_layers()), "model.llm.num_layers");
    c.positive(static_cast<double>(l.num_heads()), "model.llm.num_heads");
    c.positive(static_cast<double>(l.num_kv_heads()), "model.llm.num_kv_heads");
    c.require(l.hidden_size() % l.num_heads() == 0, "model.llm.num_heads",
              str_cat(l.num_heads(), " heads do not divide hidden_size ", l.hidden_size()));
    c.require(l.num_heads() % l.num_kv_heads() == 0, "model.llm.num_kv_heads",
              str_cat(l.num_kv_heads(), " kv heads do not divide num_heads ", l.num_heads()));
    c.require(!m.tokenizer().empty(), "model.tokenizer", "required with inline model.llm sizes");
  }
  if (files && !m.tokenizer().empty()) c.exists(m.tokenizer(), "model.tokenizer");
  if (files && !m.vision().checkpoint().empty()) c.exists(m.vision().checkpoint(), "model.vision.checkpoint");
  if (files && !m.qformer().checkpoint().empty()) c.exists(m.qformer().checkpoint(), "model.qformer.checkpoint");
  if (files && !m.qformer().bert_vocab().empty()) c.exists(m.qformer().bert_vocab(), "model.qformer.bert_vocab");
  c.positive(static_cast<double>(m.vision().image_size()), "model.vision.image_size");
  c.positive(static_cast<double>(m.vision().patch_size()), "model.vision.patch_size");
  c.require(m.vision().image_size() % m.vision().patch_size() == 0, "model.vision.patch_size",
            str_cat(m.vision().patch_size(), " does not divide image_size ", m.vision().image_size()));
  c.positive(static_cast<double>(m.vision().width()), "model.vision.width");
  c.positive(static_cast<double>(m.vision().depth()), "model.vision.depth");
  c.positive(static_cast<double>(m.vision().num_heads()), "model.vision.num_heads");
  c.positive(static_cast<double>(m.qformer().hidden_size()), "model.qformer.hidden_size");
  c.positive(static_cast<double>(m.qformer().num_layers()), "model.qformer.num_layers");
  c.positive(static_cast<double>(m.qformer().num_heads()), "model.qformer.num_heads");
  c.positive(static_cast<double>(m.qformer().cross_attention_freq()), "model.qformer.cross_attention_freq");
  c.positive(static_cast<double>(m.temporal_queries()), "model.temporal_queries");
  c.positive(static_cast<double>(m.spatial_queries()), "model.spatial_queries");
  c.positive(static_cast<double>(m.token_budget()), "model.token_budget");
  c.positive(static_cast<double>(m.frames_per_sample()), "model.frames_per_sample");
  c.positive(m.gumbel_tau(), "model.gumbel_tau");

  // Trainable patterns.
  for (int i = 0; i < recipe.trainable().unfreeze_size(); ++i)
    c.require(!recipe.trainable().unfreeze(i).empty(), "trainable.unfreeze", "an empty pattern");
  for (int i = 0; i < recipe.trainable().freeze_size(); ++i)
    c.require(!recipe.trainable().freeze(i).empty(), "trainable.freeze", "an empty pattern");

  // LoRA.
  const Lora& lora = recipe.lora();
  c.require(lora.rank() >= 0, "lora.rank", str_cat("must be >= 0 (0 = no LoRA), got ", lora.rank()));
  if (lora.rank() > 0) {
    c.positive(lora.alpha(), "lora.alpha");
    c.require(lora.dropout() >= 0 && lora.dropout() < 1, "lora.dropout",
              str_cat("must be in [0, 1), got ", lora.dropout()));
    c.require(!lora.target_regex().empty(), "lora.target_regex", "required when lora.rank > 0");
    try {
      std::regex check(lora.target_regex());
    } catch (const std::regex_error& e) {
      c.require(false, "lora.target_regex", str_cat("\"", lora.target_regex(), "\" is not a regex: ", e.what()));
    }
  }

  // Optimizer and schedule.
  const Optimizer& opt = recipe.optimizer();
  c.positive(opt.lr(), "optimizer.lr");
  c.require(opt.beta1() >= 0 && opt.beta1() < 1, "optimizer.beta1", str_cat("must be in [0, 1), got ", opt.beta1()));
  c.require(opt.beta2() >= 0 && opt.beta2() < 1, "optimizer.beta2", str_cat("must be in [0, 1), got ", opt.beta2()));
  c.positive(opt.eps(), "optimizer.eps");
  c.require(opt.weight_decay() >= 0, "optimizer.weight_decay", str_cat("must be >= 0, got ", opt.weight_decay()));
  c.require(opt.clip_grad_norm() >= 0, "optimizer.clip_grad_norm",
            str_cat("must be >= 0 (0 = off), got ", opt.clip_grad_norm()));
  const Schedule& s = recipe.schedule();
  if (s.has_warmup_ratio())
    c.require(s.warmup_ratio() >= 0 && s.warmup_ratio() <= 1, "schedule.warmup_ratio",
              str_cat("must be in [0, 1], got ", s.warmup_ratio()));
  if (s.has_warmup_steps()) {
    c.require(s.warmup_steps() >= 0, "schedule.warmup_steps", str_cat("must be >= 0, got ", s.warmup_steps()));
    if (recipe.has_steps())
      c.require(s.warmup_steps() <= recipe.steps(), "schedule.warmup_steps",
                str_cat(s.warmup_steps(), " is more than steps ", recipe.steps()));
  }

  // Layout and batch.
  const Parallel& p = recipe.parallel();
  c.positive(static_cast<double>(p.tp()), "parallel.tp");
  c.positive(static_cast<double>(p.pp()), "parallel.pp");
  c.require(p.zero_stage() >= 0 && p.zero_stage() <= 2, "parallel.zero_stage",
            str_cat("must be 0, 1 or 2, got ", p.zero_stage()));
  c.positive(static_cast<double>(p.bucket_elements()), "parallel.bucket_elements");
  c.positive(p.comm_timeout_s(), "parallel.comm_timeout_s");
  c.require(options.world % (p.tp() * p.pp()) == 0, "parallel.tp",
            str_cat("tp ", p.tp(), " x pp ", p.pp(), " does not divide the world of ", options.world, " ranks"));
  const int64_t dp = options.world / (p.tp() * p.pp());
  const Batch& b = recipe.batch();
  c.positive(static_cast<double>(b.micro_batch()), "batch.micro_batch");
  c.positive(static_cast<double>(b.grad_accum()), "batch.grad_accum");
  c.require(b.global_batch() >= 0, "batch.global_batch", str_cat("must be >= 0, got ", b.global_batch()));
  if (b.global_batch() > 0)
    c.require(
        b.global_batch() == b.micro_batch() * b.grad_accum() * dp, "batch.global_batch",
        str_cat(b.global_batch(), " != micro_batch ", b.micro_batch(), " x grad_accum ", b.grad_accum(),
                " x data-parallel ranks ", dp, " (world ", options.world, " / (tp ", p.tp(), " x pp ", p.pp(), "))"));

  // Data, checkpoints, logging.
  const Data& d = recipe.data();
  c.require(!d.shards().empty(), "data.shards", "required (a directory of bvllm_prep shards)");
  if (files) c.exists(d.shards(), "data.shards");
  c.require(d.stage() == 1 || d.stage() == 2, "data.stage", str_cat("must be 1 or 2, got ", d.stage()));
  c.positive(static_cast<double>(d.max_length()), "data.max_length");
  c.require(recipe.checkpoint().every_steps() >= 0, "checkpoint.every_steps",
            str_cat("must be >= 0 (0 = at the end), got ", recipe.checkpoint().every_steps()));
  if (files && !recipe.checkpoint().init_from().empty())
    c.exists(recipe.checkpoint().init_from(), "checkpoint.init_from");
  c.positive(static_cast<double>(recipe.logging().every_steps()), "logging.every_steps");
}

std::string recipe_to_text(const Recipe& recipe) {
  std::string text;
  pb::TextFormat::PrintToString(recipe, &text);
  return text;
}

}  // namespace bvllm::recipes
