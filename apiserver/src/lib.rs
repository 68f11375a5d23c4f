//! berth-apiserver (skeleton; see ARCHITECTURE.md).
