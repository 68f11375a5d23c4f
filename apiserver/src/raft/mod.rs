//! Raft consensus for the API server (tikv raft-rs driven by one task through the Ready loop).
//!
//! INTERFACE CONTRACT between the raft layer and the object store (do not change signatures
//! without telling the other side):
//! - The store implements [`StateMachine`]; the raft task calls it for every committed normal
//!   entry, in log order, exactly once per index (idempotent on replay: `apply` of an index
//!   <= `applied_index()` must be skipped by the raft layer).
//! - Callers submit writes with `RaftHandle::propose(bytes) -> Result<response bytes>` where the
//!   response is what `StateMachine::apply` returned for that entry on the leader.
//! - Linearizable reads call `RaftHandle::read_index().await` and then read the store.

/// The replicated state machine (the object store).
pub trait StateMachine: Send + Sync + 'static {
    /// Apply the committed entry `data` at log `index`; return the reply for the proposer.
    /// Must persist `index` as the applied index atomically with the effects.
    fn apply(&self, index: u64, data: &[u8]) -> Vec<u8>;
    /// Several committed entries at once (group commit); default applies one by one.
    fn apply_batch(&self, entries: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        entries.iter().map(|(i, d)| self.apply(*i, d)).collect()
    }
    /// The last applied index (durable).
    fn applied_index(&self) -> u64;
    /// A full snapshot of the state at `applied_index()`.
    fn snapshot(&self) -> Result<Vec<u8>, String>;
    /// Replace all state with a snapshot taken at `index`.
    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String>;
}
