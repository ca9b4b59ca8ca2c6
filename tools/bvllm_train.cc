// bvllm_train: being written (issue 7); this placeholder only keeps the build whole.
#include <cstdio>

int main() {
  std::fputs("bvllm_train: not built yet\n", stderr);
  return 1;
}
