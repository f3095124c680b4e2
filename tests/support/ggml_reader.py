"""llama.cpp's own GGUF reader (gguf_init_from_file in the binding's libggml-base), for tests that check a file
the way llama.cpp's tools open it rather than through gguf-py (tests/test_imatrix.py, tests/test_imatrix_moe.py).
"""
from __future__ import annotations

import ctypes
from pathlib import Path


def ggml_read(path: Path) -> tuple[dict[str, object], dict[str, tuple[int, int]]]:
    """The file as llama.cpp's own GGUF reader (gguf_init_from_file in the binding's libggml-base) sees it:
    the imatrix keys, and every tensor's (ggml type, byte size)."""
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))

    class InitParams(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, InitParams]
    for name, res, args in (("gguf_find_key", ctypes.c_int64, [ctypes.c_char_p]),
                            ("gguf_get_val_str", ctypes.c_char_p, [ctypes.c_int64]),
                            ("gguf_get_val_u32", ctypes.c_uint32, [ctypes.c_int64]),
                            ("gguf_get_arr_n", ctypes.c_size_t, [ctypes.c_int64]),
                            ("gguf_get_arr_str", ctypes.c_char_p, [ctypes.c_int64, ctypes.c_size_t]),
                            ("gguf_get_n_tensors", ctypes.c_int64, []),
                            ("gguf_get_tensor_name", ctypes.c_char_p, [ctypes.c_int64]),
                            ("gguf_get_tensor_type", ctypes.c_int, [ctypes.c_int64]),
                            ("gguf_get_tensor_size", ctypes.c_size_t, [ctypes.c_int64])):
        getattr(lib, name).restype = res
        getattr(lib, name).argtypes = [ctypes.c_void_p, *args]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    ctx = lib.gguf_init_from_file(str(path).encode(), InitParams(True, None))
    assert ctx, "llama.cpp's reader refused the file"
    try:
        datasets = lib.gguf_find_key(ctx, b"imatrix.datasets")
        keys: dict[str, object] = {
            "general.type": lib.gguf_get_val_str(ctx, lib.gguf_find_key(ctx, b"general.type")).decode(),
            "imatrix.datasets": [lib.gguf_get_arr_str(ctx, datasets, i).decode()
                                 for i in range(lib.gguf_get_arr_n(ctx, datasets))],
            "imatrix.chunk_count": lib.gguf_get_val_u32(ctx, lib.gguf_find_key(ctx, b"imatrix.chunk_count")),
            "imatrix.chunk_size": lib.gguf_get_val_u32(ctx, lib.gguf_find_key(ctx, b"imatrix.chunk_size"))}
        tensors = {lib.gguf_get_tensor_name(ctx, i).decode(): (lib.gguf_get_tensor_type(ctx, i),
                                                              lib.gguf_get_tensor_size(ctx, i))
                   for i in range(lib.gguf_get_n_tensors(ctx))}
    finally:
        lib.gguf_free(ctx)
    return keys, tensors
