//! Pod volumes on the node: `emptyDir` (a directory, or a tmpfs for `medium: Memory`),
//! `hostPath` (checked per its `type`), and `configMap` / `secret` projections, under
//! `DATA/volumes/POD-UID/NAME`, bind-mounted into the pod's containers.
//!
//! ConfigMap and Secret files are written the way the kubelet's atomic writer does: the files
//! live in a timestamped `..TS` directory, `..data` is a symlink to it, and each top-level
//! name is a symlink through `..data`. An update writes a new `..TS`, then renames a new
//! `..data` over the old one, so a reader sees the old set or the new one, never a mix; a
//! `subPath` mount resolves to the file itself and so never updates, as in Kubernetes.
//! Values are never logged.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use berth_proto::hostpath::HostPathPolicy;
use berth_proto::types::{Container, KeyToPath, Pod, Volume};

use crate::api::NodeApi;
use crate::runtime::Mount;

/// One file of a projection: its bytes and mode.
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// The node's pod volumes, under one root (`DATA/volumes`).
#[derive(Debug, Clone)]
pub struct Volumes {
    root: PathBuf,
    /// Where hostPath volumes may point, checked on the path as written and as resolved.
    host_paths: HostPathPolicy,
    /// This node's name: a PersistentVolume's nodeAffinity must allow it.
    node: Option<String>,
}

/// Where provisioned PersistentVolumes live under the volumes root (`DATA/volumes/pv/NAME`);
/// never a pod uid, so pod volume cleanup leaves it alone.
const PV_DIR: &str = "pv";

impl Volumes {
    pub fn new(root: PathBuf) -> Volumes {
        Volumes {
            root,
            host_paths: HostPathPolicy::default(),
            node: None,
        }
    }

    /// The node's hostPath policy (`--forbidden-host-paths`, `--allowed-host-paths`).
    pub fn with_host_paths(mut self, policy: HostPathPolicy) -> Volumes {
        self.host_paths = policy;
        self
    }

    /// Check PersistentVolumes' node affinity against this node.
    pub fn with_node(mut self, node: &str) -> Volumes {
        self.node = Some(node.to_string());
        self
    }

    /// The directory of a volume provisioned by the local-path provisioner on this node.
    pub fn provisioned_dir(&self, pv: &str) -> PathBuf {
        self.root.join(PV_DIR).join(pv)
    }

    /// The directory of the PersistentVolume bound to claim `name` of `pod`'s namespace:
    /// kubelet's checks (claim exists and is bound, volume exists and allows this node), then
    /// the volume's directory: a provisioned one under `DATA/volumes/pv` (created on first
    /// use, 0777 as k3s's local-path does), a hostPath (per its type) or a local path (must
    /// be a directory).
    async fn claim_dir(&self, api: &dyn NodeApi, pod: &Pod, name: &str) -> Result<PathBuf, String> {
        let ns = &pod.metadata.namespace;
        let claim = api
            .get_claim(ns, name)
            .await
            .map_err(|e| format!("reading persistentvolumeclaim {name:?}: {e}"))?
            .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
        if claim.spec.volume_name.is_empty() {
            return Err(format!(
                "persistentvolumeclaim {name:?} is not bound yet (its volume is provisioned once the pod is scheduled)"
            ));
        }
        let pv_name = &claim.spec.volume_name;
        let pv = api
            .get_volume(pv_name)
            .await
            .map_err(|e| format!("reading persistentvolume {pv_name:?}: {e}"))?
            .ok_or_else(|| format!("persistentvolume {pv_name:?} of claim {name:?} not found"))?;
        if let Some(me) = &self.node {
            let node = api
                .get_node(me)
                .await
                .map_err(|e| format!("reading node {me:?}: {e}"))?
                .unwrap_or_else(|| berth_proto::types::Node {
                    metadata: berth_proto::types::ObjectMeta {
                        name: me.clone(),
                        ..Default::default()
                    },
                    ..Default::default()
                });
            if !pv.allows_node(&node) {
                return Err(format!(
                    "persistentvolume {pv_name:?} has a node affinity that does not allow node {me:?}"
                ));
            }
        }
        if pv.is_provisioned() {
            let dir = self.provisioned_dir(pv_name);
            if !dir.exists() {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
                tracing::info!(volume = %pv_name, dir = %dir.display(), "provisioned a local-path volume directory");
            }
            return Ok(dir);
        }
        if let Some(h) = &pv.spec.host_path {
            return host_path(&h.path, h.type_.as_deref().unwrap_or(""));
        }
        if let Some(l) = &pv.spec.local {
            let p = PathBuf::from(&l.path);
            if !p.is_dir() {
                return Err(format!(
                    "local volume {pv_name:?}: {} is not a directory on this node",
                    l.path
                ));
            }
            return Ok(p);
        }
        Err(format!(
            "persistentvolume {pv_name:?} has no hostPath or local source"
        ))
    }

    /// Remove the directories of provisioned volumes whose PersistentVolume is gone (the
    /// binder deletes a released volume with reclaim policy Delete). Only a definite "not
    /// found" removes anything; an unreachable API keeps everything.
    pub async fn reclaim(&self, api: &dyn NodeApi) {
        let Ok(entries) = std::fs::read_dir(self.root.join(PV_DIR)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match api.get_volume(&name).await {
                Ok(None) => match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => {
                        tracing::info!(volume = %name, "removed the directory of a deleted volume")
                    }
                    Err(error) => {
                        tracing::warn!(volume = %name, %error, "removing a deleted volume's directory (retried)")
                    }
                },
                Ok(Some(_)) => {}
                Err(error) => {
                    tracing::debug!(volume = %name, %error, "checking a provisioned volume (retried)")
                }
            }
        }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join(uid)
    }

    /// Make every volume of `pod` ready (create, check, project) and return each volume's
    /// directory or file on the node. Err: kubelet's `MountVolume.SetUp failed ...` message.
    pub async fn prepare(
        &self,
        api: &dyn NodeApi,
        pod: &Pod,
    ) -> Result<BTreeMap<String, PathBuf>, String> {
        let mut out = BTreeMap::new();
        for v in &pod.spec.volumes {
            let path = self
                .prepare_one(api, pod, v)
                .await
                .map_err(|e| format!("MountVolume.SetUp failed for volume {:?}: {e}", v.name))?;
            out.insert(v.name.clone(), path);
        }
        Ok(out)
    }

    async fn prepare_one(
        &self,
        api: &dyn NodeApi,
        pod: &Pod,
        v: &Volume,
    ) -> Result<PathBuf, String> {
        let dir = self.pod_dir(&pod.metadata.uid).join(&v.name);
        let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
        if let Some(ed) = &v.empty_dir {
            if !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
                // Any container user may write an emptyDir (kubelet: 0777).
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| io("chmod", &dir, e))?;
            }
            if ed.medium.as_deref() == Some("Memory") {
                mount_tmpfs(&dir, ed.size_limit.as_ref())?;
            }
            return Ok(dir);
        }
        if let Some(h) = &v.host_path {
            // Before anything is created (DirectoryOrCreate), then on the created path.
            self.check_host_path(&h.path)?;
            let p = host_path(&h.path, h.type_.as_deref().unwrap_or(""))?;
            self.check_host_path(&h.path)?;
            return Ok(p);
        }
        if let Some(c) = &v.persistent_volume_claim {
            return self.claim_dir(api, pod, &c.claim_name).await;
        }
        let ns = &pod.metadata.namespace;
        let files = if let Some(c) = &v.config_map {
            match api
                .get_config_map(ns, &c.name)
                .await
                .map_err(|e| format!("reading configmap {:?}: {e}", c.name))?
            {
                Some(cm) => {
                    let keys: Vec<String> = cm
                        .data
                        .keys()
                        .chain(cm.binary_data.keys())
                        .cloned()
                        .collect();
                    select(
                        &keys,
                        &c.items,
                        c.default_mode,
                        |k| cm.value(k),
                        "ConfigMap",
                        ns,
                        &c.name,
                    )?
                }
                None if c.optional == Some(true) => Files::new(),
                None => return Err(format!("configmap {:?} not found", c.name)),
            }
        } else if let Some(s) = &v.secret {
            match api
                .get_secret(ns, &s.secret_name)
                .await
                .map_err(|e| format!("reading secret {:?}: {e}", s.secret_name))?
            {
                Some(sec) => {
                    let keys: Vec<String> = sec.data.keys().cloned().collect();
                    select(
                        &keys,
                        &s.items,
                        s.default_mode,
                        |k| sec.value(k),
                        "Secret",
                        ns,
                        &s.secret_name,
                    )?
                }
                None if s.optional == Some(true) => Files::new(),
                None => return Err(format!("secret {:?} not found", s.secret_name)),
            }
        } else {
            return Err("this kind of volume is not supported by Berth yet".into());
        };
        project(&dir, &files).map_err(|e| io("writing", &dir, e))?;
        Ok(dir)
    }

    /// Does `pod` have a configMap or secret volume (refreshed while it runs)?
    pub fn has_projections(pod: &Pod) -> bool {
        pod.spec
            .volumes
            .iter()
            .any(|v| v.config_map.is_some() || v.secret.is_some())
    }

    /// Re-project the configMap/secret volumes of a running pod (after an update of the
    /// object); only volumes already set up are touched.
    pub async fn refresh(&self, api: &dyn NodeApi, pod: &Pod) {
        for v in &pod.spec.volumes {
            if v.config_map.is_none() && v.secret.is_none() {
                continue;
            }
            if !self
                .pod_dir(&pod.metadata.uid)
                .join(&v.name)
                .join("..data")
                .exists()
            {
                continue;
            }
            if let Err(e) = self.prepare_one(api, pod, v).await {
                tracing::debug!(pod = %pod.metadata.name, volume = %v.name, error = %e, "refreshing a volume (retried)");
            }
        }
    }

    /// The bind mounts of container `c`, from the prepared volume paths. A `subPath` must stay
    /// inside its volume, symlinks included (checked after resolving them).
    pub fn mounts(
        c: &Container,
        prepared: &BTreeMap<String, PathBuf>,
    ) -> Result<Vec<Mount>, String> {
        let mut out = Vec::new();
        for m in &c.volume_mounts {
            let base = prepared
                .get(&m.name)
                .ok_or_else(|| format!("volume {:?} is not prepared", m.name))?;
            let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                None => base.clone(),
                Some(sub) => sub_path(base, sub).map_err(|e| {
                    format!(
                        "subPath {sub:?} of volume {:?} in container {}: {e}",
                        m.name, c.name
                    )
                })?,
            };
            out.push(Mount {
                host_path: host,
                container_path: m.mount_path.clone(),
                read_only: m.read_only == Some(true),
            });
        }
        Ok(out)
    }

    /// Remove the volumes of every pod not in `keep` (tmpfs unmounted first).
    pub fn remove_others(&self, keep: &BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let uid = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&uid) || uid == PV_DIR {
                continue;
            }
            let dir = e.path();
            if let Ok(vols) = std::fs::read_dir(&dir) {
                for v in vols.flatten() {
                    unmount_if_mounted(&v.path());
                }
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::debug!(pod_uid = %uid, "pod volumes removed"),
                Err(error) => {
                    tracing::warn!(pod_uid = %uid, %error, "removing pod volumes (retried)")
                }
            }
        }
    }
}

impl Volumes {
    /// Is hostPath `path` allowed, as written and as it resolves on this node (symlinks
    /// followed; for a path not there yet, its deepest existing ancestor)?
    fn check_host_path(&self, path: &str) -> Result<(), String> {
        let policy = |p: &str, why: String| {
            format!("hostPath {p} is refused by this node's hostPath policy: {why}")
        };
        if let Some(why) = self.host_paths.check(path) {
            return Err(policy(path, why));
        }
        let resolved = resolve(Path::new(path));
        let r = resolved.display().to_string();
        if let Some(why) = self.host_paths.check(&r) {
            return Err(policy(path, format!("it resolves to {r}, and {why}")));
        }
        Ok(())
    }
}

/// `p` with symlinks resolved: the deepest existing ancestor canonicalized, the rest appended.
fn resolve(p: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = p.to_path_buf();
    loop {
        if let Ok(real) = cur.canonicalize() {
            return rest.iter().rev().fold(real, |acc, c| acc.join(c));
        }
        match (cur.file_name().map(|n| n.to_os_string()), cur.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                cur = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// The files of a projection: every key at its own name, or only `items` at their paths.
fn select(
    keys: &[String],
    items: &[KeyToPath],
    default_mode: Option<i32>,
    value: impl Fn(&str) -> Option<Vec<u8>>,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<Files, String> {
    let mode_of = |m: Option<i32>| m.or(default_mode).map_or(0o644, |m| (m as u32) & 0o777);
    let mut files = Files::new();
    if items.is_empty() {
        for k in keys {
            if let Some(v) = value(k) {
                files.insert(k.clone(), (v, mode_of(None)));
            }
        }
    } else {
        for it in items {
            let v = value(&it.key)
                .ok_or_else(|| format!("couldn't find key {} in {kind} {ns}/{name}", it.key))?;
            files.insert(it.path.clone(), (v, mode_of(it.mode)));
        }
    }
    Ok(files)
}

/// Write `files` under `dir` atomically (see the module docs); unchanged content is left
/// alone. Returns whether anything changed.
fn project(dir: &Path, files: &Files) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data) {
        if same(&dir.join(&current), files) {
            return Ok(false);
        }
    }
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let ts = dir.join(&stamp);
    std::fs::create_dir(&ts)?;
    std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o755))?;
    for (rel, (bytes, mode)) in files {
        let p = ts.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, bytes)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
    }
    let old = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    // Top-level names point through ..data; names no longer projected go away.
    let tops: BTreeSet<String> = files
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_string))
        .collect();
    for t in &tops {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(t), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old {
        if old != Path::new(&stamp) {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
    Ok(true)
}

/// Does the projected directory hold exactly `files`?
fn same(ts: &Path, files: &Files) -> bool {
    let mut found = 0usize;
    for (rel, (bytes, mode)) in files {
        let p = ts.join(rel);
        match (std::fs::read(&p), std::fs::metadata(&p)) {
            (Ok(b), Ok(m)) if b == *bytes && (m.permissions().mode() & 0o777) == *mode => {
                found += 1
            }
            _ => return false,
        }
    }
    count_files(ts) == found
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    count_files(&p)
                } else {
                    1
                }
            })
            .sum()
    })
}

/// `base/sub`, which must resolve (symlinks followed) to a path inside `base`.
fn sub_path(base: &Path, sub: &str) -> Result<PathBuf, String> {
    if Path::new(sub)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err("must be a relative path without '..'".into());
    }
    let root = base
        .canonicalize()
        .map_err(|e| format!("resolving the volume: {e}"))?;
    let p = base.join(sub);
    if !p.exists() && std::fs::symlink_metadata(&p).is_err() {
        // Kubernetes creates a missing subPath directory.
        std::fs::create_dir_all(&p).map_err(|e| format!("creating it: {e}"))?;
    }
    let real = p.canonicalize().map_err(|e| format!("resolving it: {e}"))?;
    if !real.starts_with(&root) {
        return Err("resolves outside its volume (through a symlink)".into());
    }
    Ok(real)
}

/// A hostPath volume, checked (or created) per its type.
fn host_path(path: &str, ty: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::FileTypeExt;
    let p = PathBuf::from(path);
    let meta = std::fs::metadata(&p);
    let wrong = |want: &str| format!("hostPath type check failed: {path} is not {want}");
    match ty {
        "" => {}
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(&p).map_err(|e| format!("creating {path}: {e}"))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("chmod {path}: {e}"))?;
            } else if !p.is_dir() {
                return Err(wrong("a directory"));
            }
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("creating {}: {e}", parent.display()))?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&p)
                    .map_err(|e| format!("creating {path}: {e}"))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| format!("chmod {path}: {e}"))?;
            } else if !p.is_file() {
                return Err(wrong("a file"));
            }
        }
        _ => {
            let m = meta.map_err(|e| format!("hostPath {path}: {e}"))?;
            let ft = m.file_type();
            let ok = match ty {
                "Directory" => ft.is_dir(),
                "File" => ft.is_file(),
                "Socket" => ft.is_socket(),
                "CharDevice" => ft.is_char_device(),
                "BlockDevice" => ft.is_block_device(),
                other => return Err(format!("unsupported hostPath type {other:?}")),
            };
            if !ok {
                return Err(wrong(&format!("a {ty}")));
            }
        }
    }
    Ok(p)
}

/// A tmpfs on `dir` (once), sized by `sizeLimit`; needs CAP_SYS_ADMIN.
fn mount_tmpfs(dir: &Path, size: Option<&berth_proto::types::Quantity>) -> Result<(), String> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let mut opts = "mode=0777".to_string();
    if let Some(q) = size.and_then(|q| q.parsed().ok()) {
        opts.push_str(&format!(",size={}", q.value()));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| {
        format!(
            "mounting a tmpfs for emptyDir medium Memory on {}: {e} (the agent needs root, CAP_SYS_ADMIN)",
            dir.display()
        )
    })
}

fn is_mount_point(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = dir.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| m == want)
}

fn unmount_if_mounted(dir: &Path) {
    if is_mount_point(dir) {
        if let Err(error) = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %dir.display(), %error, "unmounting a pod tmpfs");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> Files {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), 0o644)))
            .collect()
    }

    #[test]
    fn a_projection_swaps_atomically_and_drops_removed_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cfg");
        assert!(project(
            &dir,
            &files(&[("game.properties", "lives=3"), ("ui", "dark")])
        )
        .unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.join("game.properties")).unwrap(),
            "lives=3"
        );
        assert!(std::fs::symlink_metadata(dir.join("ui"))
            .unwrap()
            .file_type()
            .is_symlink());
        // Same content: nothing rewritten.
        let before = std::fs::read_link(dir.join("..data")).unwrap();
        assert!(!project(
            &dir,
            &files(&[("game.properties", "lives=3"), ("ui", "dark")])
        )
        .unwrap());
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), before);
        // An update: new content through the same path, removed key gone, old dir removed.
        assert!(project(&dir, &files(&[("game.properties", "lives=5")])).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.join("game.properties")).unwrap(),
            "lives=5"
        );
        assert!(std::fs::symlink_metadata(dir.join("ui")).is_err());
        assert!(!dir.join(before).exists());
    }

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        symlink("/etc", vol.join("escape")).unwrap();
        assert!(sub_path(&vol, "escape/passwd")
            .unwrap_err()
            .contains("outside"));
        assert!(sub_path(&vol, "../x").is_err());
        let made = sub_path(&vol, "data/mysql").unwrap();
        assert!(made.is_dir() && made.starts_with(vol.canonicalize().unwrap()));
    }

    #[test]
    fn a_host_path_through_a_symlink_to_a_forbidden_place_is_refused_before_creating() {
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("innocent");
        symlink("/etc", &link).unwrap();
        let v = Volumes::new(tmp.path().join("volumes"));
        let err = v
            .check_host_path(&link.join("berth-new-dir").display().to_string())
            .unwrap_err();
        assert!(
            err.contains("resolves to /etc/berth-new-dir") && err.contains("under /etc"),
            "{err}"
        );
        assert!(!Path::new("/etc/berth-new-dir").exists());
        v.check_host_path(&tmp.path().join("data").display().to_string())
            .unwrap();
        let none = Volumes::new(tmp.path().join("v2"))
            .with_host_paths(HostPathPolicy::new(&["/etc"], &["none"]));
        assert!(none.check_host_path("/srv").is_err());
    }

    #[test]
    fn host_path_types_are_checked_or_created() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        host_path(d.to_str().unwrap(), "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        let f = tmp.path().join("f");
        host_path(f.to_str().unwrap(), "FileOrCreate").unwrap();
        assert!(f.is_file());
        assert!(host_path(f.to_str().unwrap(), "Directory")
            .unwrap_err()
            .contains("is not a Directory"));
        assert!(host_path(tmp.path().join("none").to_str().unwrap(), "File").is_err());
    }

    #[tokio::test]
    async fn provisioned_volumes_outlive_pods_and_go_only_once_their_volume_is_deleted() {
        use berth_proto::storage::{PersistentVolume, PROVISIONED_BY, PROVISIONER};
        let dir = tempfile::tempdir().expect("tempdir");
        let vols = Volumes::new(dir.path().to_path_buf());
        let pv_dir = vols.provisioned_dir("pvc-1");
        std::fs::create_dir_all(&pv_dir).expect("mkdir");
        std::fs::write(pv_dir.join("data"), "kept").expect("write");
        std::fs::create_dir_all(dir.path().join("some-pod-uid").join("cache")).expect("mkdir");
        // Pod volume cleanup (no pods left) never touches provisioned volumes.
        vols.remove_others(&BTreeSet::new());
        assert!(!dir.path().join("some-pod-uid").exists());
        assert_eq!(
            std::fs::read_to_string(pv_dir.join("data")).expect("read"),
            "kept"
        );
        let api = crate::api::MemoryApi::new();
        let mut pv = PersistentVolume::default();
        pv.metadata.name = "pvc-1".into();
        pv.metadata
            .annotations
            .insert(PROVISIONED_BY.into(), PROVISIONER.into());
        api.put_volume(pv);
        // The API unreachable, or the volume still there: kept.
        api.set_down(true);
        vols.reclaim(&api).await;
        assert!(pv_dir.exists());
        api.set_down(false);
        vols.reclaim(&api).await;
        assert!(pv_dir.exists());
        // The binder deleted the volume (reclaim policy Delete): the directory goes.
        api.remove_volume("pvc-1");
        vols.reclaim(&api).await;
        assert!(!pv_dir.exists());
    }
}
