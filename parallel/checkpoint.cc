// Placeholder until parallel/checkpoint.h lands.
#include "parallel/checkpoint.pb.h"
