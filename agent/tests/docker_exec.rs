//! `kubectl exec` at the agent: commands in a Docker container (berth-busybox:1, built FROM
//! scratch by images/build-busybox.sh) through the runtime's attached exec, then through the
//! agent's exec endpoint (mutual TLS, WebSocket, v5.channel.k8s.io) with the client
//! `berth exec` uses: output, stdin until closed, exit codes, a TTY. Skipped outside CI when
//! no engine answers (a failure under CI=true: berth_testkit::skip).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use berth_agent::api::PodCache;
use berth_agent::exec::{ClientIo, ExecFrame, ExecSpec};
use berth_agent::logs::LogServer;
use berth_agent::runtime::{ContainerSpec, Runtime};
use berth_testkit::images::build_busybox;
use common::{docker_or_skip, RemoveContainer};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

fn spec(command: &[&str]) -> ExecSpec {
    ExecSpec {
        command: command.iter().map(|s| s.to_string()).collect(),
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

/// Everything a session prints, (stdout, stderr), and its exit code.
async fn drain(
    rt: &dyn Runtime,
    id: &str,
    s: &ExecSpec,
    input: Option<&[u8]>,
) -> (String, String, i32) {
    let mut session = rt.exec_stream(id, s).await.expect("exec");
    if let Some(input) = input {
        let mut w = session.stdin.take().expect("stdin attached");
        w.write_all(input).await.unwrap();
        w.shutdown().await.unwrap();
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    tokio::time::timeout(T, async {
        while let Some(f) = session.output.next().await {
            match f {
                ExecFrame::Stdout(b) => out.extend_from_slice(&b),
                ExecFrame::Stderr(b) => err.extend_from_slice(&b),
            }
        }
    })
    .await
    .expect("output ends");
    let code = session.control.wait().await.expect("exit code");
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        code,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_exec_streams_output_stdin_exit_codes_and_a_tty_locally_and_over_the_agent_endpoint()
{
    let test =
        "docker_exec_streams_output_stdin_exit_codes_and_a_tty_locally_and_over_the_agent_endpoint";
    let Some(rt) = docker_or_skip(test).await else {
        return;
    };
    build_busybox();
    let c = ContainerSpec {
        pod_uid: uuid::Uuid::new_v4().to_string(),
        pod_namespace: "exec-test".into(),
        pod_name: "shell".into(),
        container_name: "main".into(),
        image: "berth-busybox:1".into(),
        command: vec!["/bin/busybox".into()],
        args: vec![
            "sh".into(),
            "-c".into(),
            "/bin/busybox --install -s /bin && exec sleep 300".into(),
        ],
        ..Default::default()
    };
    let id = rt.create(&c).await.expect("create");
    let _cleanup = RemoveContainer(id.clone());
    rt.start(&id).await.expect("start");
    // The applet links exist once the shell has run --install.
    common::wait_for(T, "busybox --install", || async {
        let (out, _, code) =
            drain(&rt, &id, &spec(&["/bin/busybox", "ls", "/bin/cat"]), None).await;
        (code == 0 && out.contains("/bin/cat")).then_some(())
    })
    .await;

    let (out, err, code) = drain(
        &rt,
        &id,
        &spec(&["sh", "-c", "echo hi; echo oops >&2; exit 3"]),
        None,
    )
    .await;
    assert_eq!((out.as_str(), err.as_str(), code), ("hi\n", "oops\n", 3));
    let mut with_stdin = spec(&["cat"]);
    with_stdin.stdin = true;
    let (out, _, code) = drain(&rt, &id, &with_stdin, Some(b"piped in\n")).await;
    assert_eq!(
        (out.as_str(), code),
        ("piped in\n", 0),
        "stdin reaches the command and its close ends it"
    );
    let mut tty = spec(&["sh", "-c", "tty; echo to-stderr >&2"]);
    tty.tty = true;
    tty.stderr = false;
    let (out, _, code) = drain(&rt, &id, &tty, None).await;
    assert!(
        out.contains("/dev/pts/"),
        "a terminal is allocated: {out:?}"
    );
    assert!(
        out.contains("to-stderr"),
        "a TTY merges stderr into stdout: {out:?}"
    );
    assert_eq!(code, 0);

    // The agent's endpoint: mutual TLS with an admin certificate, then the WebSocket protocol.
    let ca = berth_tls::ClusterCa::generate().unwrap();
    let serving = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    let runtime: Arc<dyn Runtime> = Arc::new(rt);
    let server = LogServer::bind("127.0.0.1:0", runtime.clone(), PodCache::new())
        .await
        .unwrap()
        .with_tls(berth_tls::mtls_server_config(ca.cert_pem(), &serving).unwrap());
    let addr = server.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    let admin = berth_tls::ClientTls::new(
        ca.cert_pem(),
        ca.issue_client(&berth_tls::Identity::Admin).unwrap(),
    );
    let over_the_wire = |query: &'static str, input: Option<&'static [u8]>| {
        let admin = admin.clone();
        let addr = addr.clone();
        async move {
            let config = berth_tls::mtls_client_config(&admin).unwrap();
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .unwrap();
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let stdin = input.map(|b| {
                Box::pin(std::io::Cursor::new(b))
                    as std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>
            });
            let code = tokio::time::timeout(
                T,
                berth_agent::exec::run_client(
                    tls,
                    &format!("wss://{addr}/exec/exec-test/shell/main?{query}"),
                    http::HeaderMap::new(),
                    ClientIo {
                        stdin,
                        stdout: &mut out,
                        stderr: &mut err,
                        resize: None,
                    },
                ),
            )
            .await
            .expect("exec ends");
            (
                code,
                String::from_utf8_lossy(&out).into_owned(),
                String::from_utf8_lossy(&err).into_owned(),
            )
        }
    };
    let (code, out, err) = over_the_wire(
        "command=sh&command=-c&command=echo+hi%3B+echo+oops+%3E%262%3B+exit+3&stdout=1&stderr=1",
        None,
    )
    .await;
    assert_eq!(code.unwrap(), 3);
    assert_eq!((out.as_str(), err.as_str()), ("hi\n", "oops\n"));
    let (code, out, _) = over_the_wire(
        "command=cat&stdin=1&stdout=1&stderr=1",
        Some(b"line one\nline two\n"),
    )
    .await;
    assert_eq!(code.unwrap(), 0);
    assert_eq!(out, "line one\nline two\n", "v5 close-stdin ends cat");
    let (code, _, _) = over_the_wire("command=no-such-command&stdout=1&stderr=1", None).await;
    assert!(
        code.unwrap() >= 126,
        "a missing command exits 126/127 like docker exec"
    );
    // A TTY session resized by the client: the command waits until its terminal has the
    // size the client sent.
    let config = berth_tls::mtls_client_config(&admin).unwrap();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let (sizes, resize) = tokio::sync::mpsc::channel(1);
    sizes.send((100, 40)).await.unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = tokio::time::timeout(
        T,
        berth_agent::exec::run_client(
            tls,
            &format!(
                "wss://{addr}/exec/exec-test/shell/main?command=sh&command=-c&command=\
                 while+%5B+%22%24%28stty+size%29%22+%21%3D+%2240+100%22+%5D%3B+do+sleep+0.1%3B+done%3B+stty+size\
                 &stdout=1&tty=1"
            ),
            http::HeaderMap::new(),
            ClientIo {
                stdin: None,
                stdout: &mut out,
                stderr: &mut err,
                resize: Some(resize),
            },
        ),
    )
    .await
    .expect("the resized session ends");
    drop(sizes);
    assert_eq!(code.unwrap(), 0);
    assert!(
        String::from_utf8_lossy(&out).contains("40 100"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    stop.cancel();
    let _ = tokio::time::timeout(T, task).await;
}
