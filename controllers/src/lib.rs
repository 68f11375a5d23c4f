//! berth-controllers (skeleton; see ARCHITECTURE.md).
