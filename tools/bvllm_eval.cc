// bvllm_eval: being written (issue 7); this placeholder only keeps the build whole.
#include <cstdio>

int main() {
  std::fputs("bvllm_eval: not built yet\n", stderr);
  return 1;
}
