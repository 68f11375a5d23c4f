//! The pod sandbox image: the process that holds a Docker pod's network namespace while its
//! containers come and go (Kubernetes' "pause" container).
//!
//! No registry can be assumed reachable, so the agent makes the image itself: a one-file root
//! filesystem holding `/pause`, a 129-byte static x86-64 ELF executable that calls `pause(2)`
//! forever. It needs no libc and no signal handling: the engine runs it under its init
//! (`HostConfig.init`), which forwards SIGTERM, whose default action ends it. The image is
//! imported into the engine (`POST /images/create?fromSrc=-`) the first time it is needed;
//! `--pod-infra-image` (the kubelet's `--pod-infra-container-image`) names another one, which
//! is the way on other architectures.

/// The name the built-in image is imported under.
pub const BUILTIN_IMAGE: &str = "berth.dev/pause:1";

/// Virtual address the executable is loaded at.
const BASE: u64 = 0x40_0000;
const EHDR: usize = 64;
const PHDR: usize = 56;

/// `loop: mov eax, 34 (pause); syscall; jmp loop`
#[cfg(target_arch = "x86_64")]
const CODE: &[u8] = &[0xb8, 0x22, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf7];
#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = 0x3e;

/// The `/pause` executable: an ELF64 header, one PT_LOAD program header mapping the whole
/// file read+execute, and [`CODE`]. None on architectures without a built-in sandbox.
pub fn executable() -> Option<Vec<u8>> {
    #[cfg(target_arch = "x86_64")]
    {
        let total = (EHDR + PHDR + CODE.len()) as u64;
        let mut f = Vec::with_capacity(total as usize);
        // e_ident: magic, 64-bit, little-endian, version 1, System V ABI, padding.
        f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
        f.extend_from_slice(&MACHINE.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes()); // e_version
        f.extend_from_slice(&(BASE + (EHDR + PHDR) as u64).to_le_bytes()); // e_entry
        f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        f.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
        f.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
        f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
        f.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
        f.extend_from_slice(&1u32.to_le_bytes()); // p_type: LOAD
        f.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R+X
        f.extend_from_slice(&0u64.to_le_bytes()); // p_offset
        f.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
        f.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
        f.extend_from_slice(&total.to_le_bytes()); // p_filesz
        f.extend_from_slice(&total.to_le_bytes()); // p_memsz
        f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
        f.extend_from_slice(CODE);
        Some(f)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// A tar of the root filesystem (`/pause`, mode 0755), what `fromSrc=-` imports.
pub fn rootfs_tar() -> Option<Vec<u8>> {
    let exe = executable()?;
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(exe.len() as u64);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "pause", exe.as_slice()).ok()?;
    b.into_inner().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_builtin_sandbox_is_a_tiny_static_elf_that_runs_until_terminated() {
        use std::os::unix::fs::PermissionsExt;
        let exe = executable().expect("x86_64 has a built-in sandbox");
        assert_eq!(exe.len(), 129);
        assert_eq!(&exe[..4], b"\x7fELF");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pause");
        std::fs::write(&path, &exe).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut child = std::process::Command::new(&path).spawn().expect("exec");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            child.try_wait().expect("wait").is_none(),
            "it must keep running"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("kill");
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15), "SIGTERM ends it");
        let tar = rootfs_tar().expect("tar");
        let mut a = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = a
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, vec!["pause"]);
    }
}
