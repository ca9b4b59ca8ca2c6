// PyTorch checkpoints as torch.save writes them by default since 1.6: a zip archive (stored, not
// compressed) holding <root>/data.pkl, a pickle (protocol 2) of the saved object in which every
// tensor storage is a persistent id, and one entry <root>/data/<key> per storage with its raw
// little-endian bytes. B-VLLM reads two such files from LAVIS: eva_vit_g.pth (a plain state dict)
// and instruct_blip_vicuna7b_trimmed.pth ({'model': {...}}), see ../shared/research/bvllm.md §4.
//
// Only the pickle subset that state dicts use is understood (dicts, OrderedDicts, lists, tuples,
// numbers, strings, tensors and nn.Parameters); anything else (an arbitrary Python class, a numpy
// scalar) is an error naming the global, since executing a pickle is not an option.
#pragma once

#include <string>

#include "runtime/io/safetensors.h"  // defines: NamedTensors
#include "runtime/tensor.h"

namespace bvllm {

// Every tensor of a torch.save'd object, by dotted path, in the order the pickle holds them:
// nested dicts (dict/OrderedDict) are flattened with '.', so {'model': {'a.b': t}} gives
// "model.a.b"; an integer key is written in decimal and a list or tuple element by its index
// ("layers.0"); a bare saved tensor gets the empty name. Leaves that are not tensors (ints,
// floats, strings, None, bools) are skipped, and so is the state an OrderedDict carries as
// attributes (a state dict's `_metadata`).
//
// Tensors are CPU tensors with the shape, strides and storage offset they were saved with:
// tensors that shared a storage in Python share one bvllm Storage (a transposed or sliced view
// stays a non-contiguous view; call contiguous() where a kernel needs it). The file is mapped
// privately and copy-on-write: storages whose bytes are aligned to their element size (torch
// aligns every entry to 64 bytes) view the mapping, which stays alive as long as any of them
// does; others are copied. Writing into a returned tensor never changes the file. The storage
// location saved with a tensor ('cuda:0') is ignored.
//
// Throws bvllm::Error naming the file and what is wrong: a legacy (pre-1.6, non-zip) file, a
// truncated or compressed archive, a missing data.pkl or storage entry, an unsupported pickle
// opcode (byte and offset) or global (module.name), or a dtype bvllm does not have (tensor name).
NamedTensors load_pth(const std::string& path);

}  // namespace bvllm
