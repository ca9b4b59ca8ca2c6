// Recipes: protobuf text files (recipes/recipe.proto is the schema) that describe a training run.
//
//   Recipe recipe = load_recipe("recipes/stage2.pb", {"optimizer.lr=2e-4", "steps=8"});
//   validate(recipe, "recipes/stage2.pb", {.world = 16});
//   LOG(INFO) << recipe_to_text(recipe);
//
// Every error is one bvllm::Error that names the recipe file and the field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "recipes/recipe.pb.h"

namespace bvllm::recipes {

// Reads the recipe at `path` (protobuf text), fills the defaults of fields it leaves out (the
// values that recipe.proto documents), then applies `overrides` in order, each "FIELD.PATH=VALUE":
//   - the path names nested messages by field name, dot-separated ("optimizer.lr", "steps");
//   - numbers parse in full (a trailing character is an error), bools are true/false/1/0,
//     enums are given by value name ("schedule.kind=COSINE"), strings are taken verbatim;
//   - a repeated field is REPLACED by the comma-separated list ("trainable.unfreeze=a*,b*";
//     an empty VALUE clears it); repeated messages cannot be set;
//   - setting a member of a oneof switches the oneof ("epochs=1" clears "steps");
//   - a path that ends at a message is refused (set its fields instead).
// An unknown, ill-typed or repeated singular field in the file gives "PATH:LINE:COL: message"
// (1-based, protobuf's position: for a bad enum value, the token after it); an unparsable override
// gives "PATH: --set OVERRIDE: message". The result is not validated: the trainer calls validate()
// once it knows the world size.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});

// Parses recipe text (the file's contents), with `source` naming it in errors; as load_recipe.
Recipe parse_recipe(const std::string& text, const std::string& source, const std::vector<std::string>& overrides = {});

struct ValidateOptions {
  int64_t world = 1;        // ranks of the run: dp = world / (tp * pp).
  bool check_files = true;  // require the paths the recipe names to exist.
};

// Checks what the trainer relies on before any work starts: positive sizes, lr and length, a
// batch that divides (global_batch = micro_batch * grad_accum * dp when global_batch is set),
// a layout that divides the world, LoRA settings when rank > 0 (the regex compiles), and with
// check_files the data, model and checkpoint paths. Throws "SOURCE: FIELD: message".
void validate(const Recipe& recipe, const std::string& source, const ValidateOptions& options = {});

// The resolved recipe as protobuf text, for logs and the run directory.
std::string recipe_to_text(const Recipe& recipe);

}  // namespace bvllm::recipes
