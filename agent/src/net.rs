//! Placeholder until the host networking module lands (branch hostnet).
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
pub async fn sync_vips(_vips: &BTreeSet<Ipv4Addr>) -> Result<(), String> {
    Ok(())
}
