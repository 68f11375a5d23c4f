//! `berth cluster status`: the leader's view of the raft group plus each member's own
//! answer (health as seen from this client).

use anyhow::Context;
use berth_client::ClientError;
use berth_proto::pb::ClusterStatusResponse;
use clap::{Args, Subcommand};

use super::table::Table;
use super::{Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Members, leader, term, commit/applied index, revision and health per member.
    Status,
    /// Remove a member by ID or ADDRESS (admin). Refused when the members left would have
    /// fewer healthy ones than their quorum (unless --force), and for the last member.
    RemoveMember {
        #[arg(value_name = "ID|ADDRESS")]
        target: String,
        /// Remove even if the members left are below quorum.
        #[arg(long)]
        force: bool,
    },
    /// Hand raft leadership to member ID (admin), e.g. before maintenance on the leader.
    MoveLeader {
        #[arg(value_name = "ID")]
        id: u64,
    },
}

/// What one member said about itself when asked directly.
pub type MemberAnswer = Result<ClusterStatusResponse, String>;

/// Render the overview (from any server) and one row per member (its own answer).
pub fn render_status(
    overview: &ClusterStatusResponse,
    answers: &[(u64, String, MemberAnswer)],
) -> String {
    let leader = overview
        .members
        .iter()
        .find(|m| m.id == overview.leader_id)
        .map(|m| format!("{} ({})", m.id, m.address))
        .unwrap_or_else(|| {
            if overview.leader_id == 0 {
                "none (election in progress)".to_string()
            } else {
                overview.leader_id.to_string()
            }
        });
    let mut out = format!(
        "Leader:    {leader}\nTerm:      {}\nCommitted: {}\nApplied:   {}\nRevision:  {}\n\n",
        overview.term, overview.commit_index, overview.applied_index, overview.revision
    );
    let mut t = Table {
        headers: [
            "ID", "ADDRESS", "ROLE", "HEALTH", "TERM", "COMMIT", "APPLIED", "REVISION", "MATCHED",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        rows: Vec::new(),
    };
    for (id, addr, answer) in answers {
        let m = overview.members.iter().find(|m| m.id == *id);
        let role = if *id == overview.leader_id {
            "leader"
        } else {
            "follower"
        };
        let matched = m
            .map(|m| m.matched.to_string())
            .unwrap_or_else(|| "-".into());
        let row = match answer {
            Ok(s) => vec![
                id.to_string(),
                addr.clone(),
                role.to_string(),
                if s.leader_id == 0 {
                    "no leader".to_string()
                } else {
                    "healthy".to_string()
                },
                s.term.to_string(),
                s.commit_index.to_string(),
                s.applied_index.to_string(),
                s.revision.to_string(),
                matched,
            ],
            Err(e) => vec![
                id.to_string(),
                addr.clone(),
                role.to_string(),
                format!("unreachable: {e}"),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                matched,
            ],
        };
        t.rows.push(row);
    }
    out.push_str(&t.render());
    out
}

pub async fn run(ctx: &Ctx, a: ClusterArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    match a.command {
        ClusterCommand::Status => status(ctx, io).await,
        ClusterCommand::RemoveMember { target, force } => {
            super::membership::remove_member(ctx, &target, force, io).await
        }
        ClusterCommand::MoveLeader { id } => super::membership::move_leader(ctx, id, io).await,
    }
}

async fn status(ctx: &Ctx, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let overview = client
        .cluster_status()
        .await
        .context("cannot get cluster status")?;
    let mut answers = Vec::new();
    let asks = overview.members.iter().map(|m| {
        let client = client.clone();
        let (id, addr) = (m.id, m.address.clone());
        async move {
            let r = client.cluster_status_of(&addr).await.map_err(|e| match e {
                // Just the reason: the row already names the address.
                ClientError::Unavailable { tried } => tried
                    .split_once(": ")
                    .map(|(_, why)| why.to_string())
                    .unwrap_or(tried),
                e => e.to_string(),
            });
            (id, addr, r)
        }
    });
    for r in futures::future::join_all(asks).await {
        answers.push(r);
    }
    io.out
        .write_all(render_status(&overview, &answers).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::pb::Member;

    #[test]
    fn status_names_leader_and_marks_unreachable_members() {
        let overview = ClusterStatusResponse {
            id: 1,
            leader_id: 2,
            term: 7,
            commit_index: 40,
            applied_index: 40,
            revision: 31,
            certificate_expires: String::new(),
            members: vec![
                Member {
                    id: 1,
                    address: "10.0.0.1:7440".into(),
                    is_leader: false,
                    matched: 40,
                    reachable: true,
                },
                Member {
                    id: 2,
                    address: "10.0.0.2:7440".into(),
                    is_leader: true,
                    matched: 40,
                    reachable: true,
                },
                Member {
                    id: 3,
                    address: "10.0.0.3:7440".into(),
                    is_leader: false,
                    matched: 12,
                    reachable: false,
                },
            ],
        };
        let answers = vec![
            (1, "10.0.0.1:7440".to_string(), Ok(overview.clone())),
            (2, "10.0.0.2:7440".to_string(), Ok(overview.clone())),
            (
                3,
                "10.0.0.3:7440".to_string(),
                Err("connection refused".to_string()),
            ),
        ];
        let text = render_status(&overview, &answers);
        assert!(
            text.starts_with("Leader:    2 (10.0.0.2:7440)\nTerm:      7\n"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[6],
            "ID   ADDRESS         ROLE       HEALTH                            TERM   COMMIT   APPLIED   REVISION   MATCHED"
        );
        assert_eq!(
            lines[9],
            "3    10.0.0.3:7440   follower   unreachable: connection refused   -      -        -         -          12"
        );
    }
}
