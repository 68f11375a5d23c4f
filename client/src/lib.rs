//! berth-client (skeleton; see ARCHITECTURE.md).
