// SPDX-License-Identifier: GPL-2.0
/*
 * Process lifecycle capture for the EDR collector: exec (filename, cwd, exe path, argv), fork, exit.
 * CO-RE against vmlinux.h; tp_btf hooks need no tracefs. Every record is counted in `counters`
 * before it is emitted, and every record lost to a full ring is counted again, so user space can
 * reconcile: seen == received + ring_drops.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "edr_events.h"

char LICENSE[] SEC("license") = "GPL";

/* Bytes of exec data a record can carry: filename, cwd, exe, then argv, each at most its maximum. */
#define EDR_DATA_MAX (3 * EDR_PATH_MAX + EDR_ARGV_MAX)

/* Per-CPU scratch: exec records are built here and copied to the ring with their actual size, so
 * the ring holds what was read, not the 20 KiB maximum. */
struct edr_scratch {
	char buf[sizeof(struct edr_event) + EDR_DATA_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024); /* user space may resize before load */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct edr_scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EDR_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Set by user space before load: wake the drain thread only once this many bytes wait in the ring,
 * so a storm costs one wake-up per batch, not per record; the drain's poll timeout bounds the delay
 * of a lone event. 0 wakes as soon as the drain thread has caught up (lowest latency). */
const volatile __u32 wakeup_bytes = 0;

static __always_inline __u64 wakeup_flags(void)
{
	if (!wakeup_bytes)
		return 0;
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									       : BPF_RB_NO_WAKEUP;
}

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	/* Per-CPU slot, but not per-program: a program preempted between the load and the store of a
	 * plain `+= 1` (tracing programs run with only migration disabled on PREEMPT_RT and some paths)
	 * would overwrite the count of the one that ran meanwhile on the same CPU. An atomic add (one
	 * uncontended locked instruction) loses nothing. */
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void fill_common(struct edr_event *e, struct task_struct *t, __u32 kind)
{
	const struct cred *cred = BPF_CORE_READ(t, real_cred);

	e->kind = kind;
	e->size = sizeof(*e);
	e->time_ns = bpf_ktime_get_boot_ns();
	/* The leader's start: exec from a thread swaps in the leader's start time, fork children lead. */
	e->start_time_ns = BPF_CORE_READ(t, group_leader, start_boottime);
	e->cgroup_id = BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
	e->pid = BPF_CORE_READ(t, tgid);
	e->tid = BPF_CORE_READ(t, pid);
	e->ppid = BPF_CORE_READ(t, real_parent, tgid);
	e->uid = BPF_CORE_READ(cred, uid.val);
	e->euid = BPF_CORE_READ(cred, euid.val);
	e->gid = BPF_CORE_READ(cred, gid.val);
	if (bpf_core_field_exists(t->loginuid)) {
		e->login_uid = BPF_CORE_READ(t, loginuid.val);
		e->session_id = BPF_CORE_READ(t, sessionid);
	} else {
		e->login_uid = (__u32)-1; /* kernel without CONFIG_AUDIT: "unset" */
		e->session_id = (__u32)-1;
	}
	e->exit_code = 0;
	e->flags = 0;
	e->filename_len = 0;
	e->cwd_len = 0;
	e->exe_len = 0;
	e->reserved = 0;
	e->argv_len = 0;
	e->argv_full_len = 0;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), BPF_CORE_READ(t, comm));
}

/* State of a path walk (cwd, exe), one path component per bpf_loop step. */
struct edr_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	__u32 base; /* where the path starts in the scratch data */
	__u32 off;  /* bytes of path written so far */
	__u32 flags;
	__u32 done;
	__u32 trunc_flag; /* what to set in flags when the path does not fit */
	__u32 err_flag;   /* what to set when a component cannot be read */
};

/* One step up the dentry chain. bpf_loop keeps the verifier's work to one step, where an unrolled
 * walk with mount crossings explodes into millions of states. */
static long walk_step(__u32 index, void *arg)
{
	struct edr_walk *w = arg;
	/* Locals: CO-RE reads must not relocate the fields of edr_walk itself. */
	struct dentry *dentry = w->dentry, *parent, *mnt_root;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;
	__u32 zero = 0, base = w->base, off = w->off;
	struct edr_scratch *s;
	long n;

	if (dentry == w->root_dentry && vfsmnt == w->root_mnt) {
		w->done = 1;
		return 1;
	}
	mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == mnt_root || dentry == parent) {
		struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);

		if (mnt == mnt_parent) {
			w->done = 1; /* the global root */
			return 1;
		}
		/* Root of a mount: continue from where it is mounted. */
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = mnt_parent;
		w->vfsmnt = (void *)mnt_parent + bpf_core_field_offset(struct mount, mnt);
		return 0;
	}
	if (base > 2 * EDR_PATH_MAX || off > EDR_PATH_MAX - EDR_NAME_MAX) {
		w->flags |= w->trunc_flag;
		w->done = 1;
		return 1;
	}
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 1;
	n = bpf_probe_read_kernel_str(s->buf + sizeof(struct edr_event) + base + off, EDR_NAME_MAX,
				      BPF_CORE_READ(dentry, d_name.name));
	if (n <= 0) {
		w->flags |= w->err_flag;
		w->done = 1;
		return 1;
	}
	w->off = off + n;
	w->dentry = parent;
	return 0;
}

/*
 * Writes the path of (mnt, dentry) into the scratch data at base (at most EDR_PATH_MAX bytes), leaf
 * component first, each NUL-terminated, up to the task's root or the global root, crossing mount
 * points. Returns the bytes written; sets trunc_flag / err_flag in *flags.
 */
static __always_inline __u32 read_path(struct fs_struct *fs, struct vfsmount *vfsmnt, struct dentry *dentry,
				       __u32 base, __u32 trunc_flag, __u32 err_flag, __u32 *flags)
{
	struct edr_walk w = {
		.dentry = dentry,
		.vfsmnt = vfsmnt,
		.root_dentry = BPF_CORE_READ(fs, root.dentry),
		.root_mnt = BPF_CORE_READ(fs, root.mnt),
		.base = base,
		.trunc_flag = trunc_flag,
		.err_flag = err_flag,
	};

	if (!dentry || !vfsmnt) {
		*flags |= err_flag;
		return 0;
	}
	w.mnt = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
	bpf_loop(EDR_PATH_DEPTH_MAX, walk_step, &w, 0);
	if (!w.done)
		w.flags |= trunc_flag;
	*flags |= w.flags;
	return w.off > EDR_PATH_MAX ? EDR_PATH_MAX : w.off;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(edr_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0;
	struct edr_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	struct edr_event *e;
	struct mm_struct *mm;
	unsigned long arg_start, arg_end, full;
	struct fs_struct *fs;
	struct file *exe;
	__u32 flen, clen, xlen, alen, flags = 0;
	char *data;
	long n;

	if (!s)
		return 0;
	count(EDR_C_SEEN);
	count(EDR_C_EXEC_SEEN);
	e = (struct edr_event *)s->buf;
	data = s->buf + sizeof(*e);
	fill_common(e, p, EDR_EVENT_EXEC);
	/* A non-leader thread that execs takes the leader's pid: old_pid is the thread that called execve. */
	e->tid = old_pid;

	/* filename: as passed to execve (user space resolves a relative one against cwd). */
	n = bpf_probe_read_kernel_str(data, EDR_PATH_MAX, BPF_CORE_READ(bprm, filename));
	if (n <= 0) {
		flags |= EDR_F_FILENAME_READ_ERROR;
		data[0] = 0;
		n = 1;
	} else if (n == EDR_PATH_MAX) {
		flags |= EDR_F_FILENAME_TRUNCATED;
	}
	flen = n;
	if (flen > EDR_PATH_MAX) /* for the verifier: keeps the cwd offset bounded */
		flen = EDR_PATH_MAX;

	fs = BPF_CORE_READ(p, fs);
	clen = read_path(fs, BPF_CORE_READ(fs, pwd.mnt), BPF_CORE_READ(fs, pwd.dentry), flen, EDR_F_CWD_TRUNCATED,
			 EDR_F_CWD_READ_ERROR, &flags);
	if (clen > EDR_PATH_MAX)
		clen = EDR_PATH_MAX;

	/* exe: the file the new image runs, as the kernel resolved it (what /proc/PID/exe shows). */
	mm = BPF_CORE_READ(p, mm);
	exe = BPF_CORE_READ(mm, exe_file);
	xlen = read_path(fs, BPF_CORE_READ(exe, f_path.mnt), BPF_CORE_READ(exe, f_path.dentry), flen + clen,
			 EDR_F_EXE_TRUNCATED, EDR_F_EXE_READ_ERROR, &flags);
	if (xlen > EDR_PATH_MAX)
		xlen = EDR_PATH_MAX;

	/* argv from the new image: exec has just copied it there, so the pages are present. */
	arg_start = BPF_CORE_READ(mm, arg_start);
	arg_end = BPF_CORE_READ(mm, arg_end);
	full = arg_end > arg_start ? arg_end - arg_start : 0;
	alen = full > EDR_ARGV_MAX ? EDR_ARGV_MAX : full;
	if (full > EDR_ARGV_MAX)
		flags |= EDR_F_ARGV_TRUNCATED;
	if (alen > 0 && alen <= EDR_ARGV_MAX) {
		if (bpf_probe_read_user(data + flen + clen + xlen, alen, (const void *)arg_start) < 0) {
			flags |= EDR_F_ARGV_READ_ERROR;
			alen = 0;
		}
	} else {
		alen = 0;
	}

	e->flags = flags;
	e->filename_len = flen;
	e->cwd_len = clen;
	e->exe_len = xlen;
	e->argv_len = alen;
	e->argv_full_len = full > 0xffffffffUL ? 0xffffffffU : full;
	e->size = sizeof(*e) + flen + clen + xlen + alen;
	if (flags & EDR_F_ARGV_TRUNCATED)
		count(EDR_C_ARGV_TRUNCATED);
	if (flags & EDR_F_PATH_TRUNCATED)
		count(EDR_C_PATH_TRUNCATED);
	if (flags & EDR_F_READ_ERRORS)
		count(EDR_C_READ_ERRORS);

	if (e->size > sizeof(*s)) /* never true; tells the verifier the copy stays in the scratch */
		return 0;
	if (bpf_ringbuf_output(&events, s, e->size, wakeup_flags()))
		count(EDR_C_RING_DROPS);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(edr_fork, struct task_struct *parent, struct task_struct *child)
{
	struct edr_event *e;

	/* New threads share the process: only new processes change the process tree. */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	count(EDR_C_SEEN);
	count(EDR_C_FORK_SEEN);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(EDR_C_RING_DROPS);
		return 0;
	}
	fill_common(e, child, EDR_EVENT_FORK);
	bpf_ringbuf_submit(e, wakeup_flags());
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(edr_exit, struct task_struct *p)
{
	struct edr_event *e;

	/* do_exit has already decremented signal->live: zero means the last thread, the process, ends. */
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	count(EDR_C_SEEN);
	count(EDR_C_EXIT_SEEN);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(EDR_C_RING_DROPS);
		return 0;
	}
	fill_common(e, p, EDR_EVENT_EXIT);
	e->exit_code = BPF_CORE_READ(p, exit_code);
	bpf_ringbuf_submit(e, wakeup_flags());
	return 0;
}
