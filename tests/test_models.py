"""models.py: the GGUF conversion's parse-once scope (the conversion itself runs in tests/test_e2e_embedded.py)."""
from __future__ import annotations

import gguf
import numpy as np

from tunelab import models


def _tiny_gguf(path) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.arange(6, dtype=np.float32).reshape(3, 2))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_file_is_parsed_once_within_a_conversion_and_as_usual_outside(tmp_path):
    path = tmp_path / "tiny.gguf"
    _tiny_gguf(path)
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with models._gguf_parsed_once():
        first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))  # transformers passes a str or a Path
        assert first is again
        assert [t.name for t in first.tensors] == ["token_embd.weight"]
        assert np.array_equal(first.tensors[0].data, np.arange(6, dtype=np.float32).reshape(3, 2))
        arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == "llama")
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
        assert gguf.get_tensor_name_map(arch, 2).get_name("model.layers.1.self_attn.q_proj") == "blk.1.attn_q"
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)  # restored
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)
