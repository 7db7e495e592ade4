"""Typed stubs of the Rust core (`rust/src/python.rs`)."""

__version__: str
