//! berth-testkit (skeleton; see ARCHITECTURE.md).
