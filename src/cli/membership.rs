//! `berth cluster remove-member ID|ADDR [--force]` and `berth cluster move-leader ID`
//! (admin), like `etcdctl member remove` / `move-leader`.
//!
//! Before removing, every member is asked directly whether it is up and sees a leader; the
//! removal is refused (without `--force`) when the members left would have fewer healthy
//! ones than their quorum — e.g. removing a healthy member of three while another is down.
//! Removing the leader hands leadership to a healthy member first, so writes see one short
//! leader change instead of an election. The last member is never removed.

use anyhow::{bail, Context};
use berth_proto::pb::Member;

use super::{Ctx, Io};

/// May member `target` be removed, given which `members` are healthy?
pub fn check_removal(members: &[(Member, bool)], target: u64, force: bool) -> Result<(), String> {
    if members.len() <= 1 {
        return Err(format!(
            "refusing to remove member {target}: it is the last member and the cluster would \
             have none; stop its server instead"
        ));
    }
    let left = members.len() - 1;
    let quorum = left / 2 + 1;
    let healthy_left = members
        .iter()
        .filter(|(m, healthy)| m.id != target && *healthy)
        .count();
    if healthy_left < quorum && !force {
        return Err(format!(
            "refusing to remove member {target}: the {left} members left would have {healthy_left} \
             healthy, below their quorum of {quorum}, so the cluster could not write; bring \
             the unhealthy members back first (`berth cluster status`), or pass --force"
        ));
    }
    Ok(())
}

/// The member named by `target`: its id or its address.
fn resolve(members: &[Member], target: &str) -> anyhow::Result<u64> {
    let found = match target.parse::<u64>() {
        Ok(id) => members.iter().find(|m| m.id == id),
        Err(_) => members.iter().find(|m| m.address == target),
    };
    match found {
        Some(m) => Ok(m.id),
        None => bail!(
            "no cluster member {target:?}: give its ID or ADDRESS as `berth cluster status` \
             shows them"
        ),
    }
}

async fn health(ctx: &Ctx) -> anyhow::Result<(Vec<(Member, bool)>, u64)> {
    let client = ctx.client()?;
    let overview = client
        .cluster_status()
        .await
        .context("cannot get cluster status")?;
    let asks = overview.members.iter().map(|m| {
        let client = client.clone();
        let m = m.clone();
        async move {
            let healthy = client
                .cluster_status_of(&m.address)
                .await
                .is_ok_and(|s| s.leader_id != 0);
            (m, healthy)
        }
    });
    Ok((futures::future::join_all(asks).await, overview.leader_id))
}

pub async fn remove_member(
    ctx: &Ctx,
    target: &str,
    force: bool,
    io: &mut Io<'_>,
) -> anyhow::Result<()> {
    let (members, leader) = health(ctx).await?;
    let plain: Vec<Member> = members.iter().map(|(m, _)| m.clone()).collect();
    let id = resolve(&plain, target)?;
    check_removal(&members, id, force).map_err(anyhow::Error::msg)?;
    let client = ctx.client()?;
    if id == leader {
        if let Some((to, _)) = members.iter().find(|(m, healthy)| m.id != id && *healthy) {
            writeln!(
                io.err,
                "member {id} leads: moving leadership to member {} first",
                to.id
            )?;
            client
                .move_leader(to.id)
                .await
                .with_context(|| format!("moving leadership off member {id}"))?;
        }
    }
    client
        .remove_member(id)
        .await
        .with_context(|| format!("removing member {id}"))?;
    writeln!(
        io.out,
        "member {id} removed; stop its server and delete its data dir before it joins again"
    )?;
    Ok(())
}

pub async fn move_leader(ctx: &Ctx, id: u64, io: &mut Io<'_>) -> anyhow::Result<()> {
    let leader = ctx
        .client()?
        .move_leader(id)
        .await
        .with_context(|| format!("moving leadership to member {id}"))?;
    writeln!(io.out, "member {leader} is the leader")?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(id: u64, healthy: bool) -> (Member, bool) {
        (
            Member {
                id,
                address: format!("10.0.0.{id}:7440"),
                ..Default::default()
            },
            healthy,
        )
    }

    #[test]
    fn removal_keeps_quorum_of_the_members_left_unless_forced() {
        let all_up = [m(1, true), m(2, true), m(3, true)];
        assert!(check_removal(&all_up, 2, false).is_ok());
        let one_down = [m(1, true), m(2, true), m(3, false)];
        // Removing the down member is fine; removing a healthy one leaves 1 of 2.
        assert!(check_removal(&one_down, 3, false).is_ok());
        let err = check_removal(&one_down, 2, false).unwrap_err();
        assert!(
            err.contains("below their quorum of 2") && err.contains("--force"),
            "{err}"
        );
        assert!(check_removal(&one_down, 2, true).is_ok());
        let err = check_removal(&[m(1, true)], 1, true).unwrap_err();
        assert!(err.contains("last member"), "{err}");
        assert_eq!(resolve(&[all_up[1].0.clone()], "10.0.0.2:7440").unwrap(), 2);
        assert!(resolve(&[all_up[1].0.clone()], "7").is_err());
    }
}
