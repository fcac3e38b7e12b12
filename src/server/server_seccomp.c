/*
 * server_seccomp.c - the system call filter of the daemon.
 *
 * Owns: one seccomp-bpf filter, installed on every thread of `strata
 * serve` once the listeners are bound, the nft helper is forked and the
 * process runs as the service user, before any network byte is read.
 *
 * Policy: a deny list.  The daemon's own work (sockets, files, fsync,
 * mmap, threads, futexes, timers, epoll, and a thread lowering its own
 * priority: setpriority, sched_setscheduler to SCHED_IDLE and ioprio_set
 * by the tier mover and the MX network threads) is allowed; what a compromised
 * parser would need to leave the process or act on the machine is refused
 * with EPERM: starting programs (execve, execveat), inspecting or writing
 * other processes (ptrace, process_vm_*), new namespaces (unshare, setns),
 * mounts, modules, kexec, reboot, swap, BPF, perf, keyrings, userfaultfd,
 * clock and host name changes, raw port I/O, and the rest of the
 * administrator's calls listed below.  A call of another architecture's
 * ABI (x32 on x86-64, or a foreign AUDIT_ARCH) kills the process: a real
 * Strata never makes one, so it can only be an exploit.
 *
 * Sanitizer builds (tests only) leave ptrace allowed: LeakSanitizer
 * needs it to stop the threads at exit.
 *
 * Why EPERM and not a kill for the listed calls: a library that probes a
 * call (glibc, OpenSSL) must keep working, and a refused call already
 * stops an attack.  PR_SET_NO_NEW_PRIVS comes first (required, and it also
 * makes setuid binaries harmless).  SECCOMP_FILTER_FLAG_TSYNC puts the
 * filter on every thread at once, so the order of thread creation does not
 * matter.
 *
 * Threads: any thread; affects all threads of the process, for good.
 */
#include "server_int.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define FILTER_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define FILTER_ARCH AUDIT_ARCH_AARCH64
#elif defined(__i386__)
#define FILTER_ARCH AUDIT_ARCH_I386
#endif

/* LeakSanitizer stops the world with ptrace at exit: sanitizer builds
 * (tests only) keep ptrace, and only ptrace. */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZER_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZER_BUILD 1
#endif
#endif

static const int denied_calls[] = {
	SYS_execve, SYS_execveat, SYS_process_vm_readv, SYS_process_vm_writev,
#ifndef SANITIZER_BUILD
	SYS_ptrace,
#endif
	SYS_unshare, SYS_setns, SYS_mount, SYS_umount2, SYS_pivot_root, SYS_chroot,
	SYS_init_module, SYS_finit_module, SYS_delete_module, SYS_kexec_load, SYS_reboot,
	SYS_swapon, SYS_swapoff, SYS_acct, SYS_bpf, SYS_perf_event_open, SYS_keyctl, SYS_add_key,
	SYS_request_key, SYS_userfaultfd, SYS_personality, SYS_quotactl, SYS_open_by_handle_at,
	SYS_name_to_handle_at, SYS_syslog, SYS_settimeofday, SYS_clock_settime, SYS_adjtimex,
	SYS_clock_adjtime, SYS_sethostname, SYS_setdomainname, SYS_vhangup, SYS_kcmp,
	SYS_fanotify_init, SYS_lookup_dcookie,
#ifdef SYS_kexec_file_load
	SYS_kexec_file_load,
#endif
#ifdef SYS_iopl
	SYS_iopl,
#endif
#ifdef SYS_ioperm
	SYS_ioperm,
#endif
#ifdef SYS_move_mount
	SYS_move_mount, SYS_open_tree, SYS_fsopen, SYS_fsconfig, SYS_fsmount, SYS_fspick,
#endif
#ifdef SYS_mount_setattr
	SYS_mount_setattr,
#endif
#ifdef SYS_pidfd_getfd
	SYS_pidfd_getfd,
#endif
};

#define N_DENIED (sizeof(denied_calls) / sizeof(denied_calls[0]))

size_t server_seccomp_denied(const int **calls_r)
{
	*calls_r = denied_calls;
	return N_DENIED;
}

bool server_seccomp_apply(char **error_r)
{
#ifndef FILTER_ARCH
	*error_r = xstrdup("seccomp: no filter for this architecture");
	return false;
#else
	/* arch check (3), nr load (1), x32 check (x86-64: 1), one jump per
	 * denied call, allow, deny. */
	struct sock_filter prog[8 + N_DENIED];
	size_t n = 0;
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
	prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, FILTER_ARCH, 1, 0);
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
#if defined(__x86_64__)
	/* x32 system calls: numbers with bit 30 set.  Jump over the list and
	 * the allow, to the kill below the deny. */
	prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, (uint8_t)(N_DENIED + 2), 0);
#endif
	for (size_t i = 0; i < N_DENIED; i++) {
		/* true: skip the remaining checks and the allow */
		uint8_t to_deny = (uint8_t)(N_DENIED - i);
		prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)denied_calls[i], to_deny, 0);
	}
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA));
#if defined(__x86_64__)
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
#endif
	struct sock_fprog fprog = { .len = (unsigned short)n, .filter = prog };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		*error_r = xasprintf("seccomp: PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
		return false;
	}
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog) != 0) {
		*error_r = xasprintf("seccomp: installing the system call filter: %s", strerror(errno));
		return false;
	}
	return true;
#endif
}
