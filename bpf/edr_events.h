/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one definition of the records the BPF program (exec.bpf.c) writes to the ring buffer and the
 * native addon (native/src/capture.cc) decodes. Plain C types only, so the same header compiles
 * against vmlinux.h (BPF side) and the C library (user side). Any change here is a change of the
 * kernel/user contract: bump EDR_EVENT_VERSION.
 */
#ifndef EDR_EVENTS_H
#define EDR_EVENTS_H

#define EDR_EVENT_VERSION 1

#define EDR_COMM_LEN 16
/* Bytes of argv copied from the new image's arg_start..arg_end; longer argv sets EDR_F_ARGV_TRUNCATED
 * and keeps its full length in argv_full_len. A power of two: the verifier bounds offsets by masking. */
#define EDR_ARGV_MAX 8192
/* Bytes kept of the filename passed to execve and of the cwd path (NUL included). */
#define EDR_PATH_MAX 4096
/* Longest single path component (NAME_MAX + NUL). */
#define EDR_NAME_MAX 256
/* Deepest path (cwd, exe) the in-kernel dentry walk follows; deeper paths keep their last components
 * and set EDR_F_CWD_TRUNCATED / EDR_F_EXE_TRUNCATED. */
#define EDR_PATH_DEPTH_MAX 64

enum edr_event_kind {
	EDR_EVENT_EXEC = 1,
	EDR_EVENT_FORK = 2,
	EDR_EVENT_EXIT = 3,
};

/* edr_event.flags */
enum edr_event_flags {
	EDR_F_ARGV_TRUNCATED = 1 << 0,     /* argv longer than EDR_ARGV_MAX */
	EDR_F_ARGV_READ_ERROR = 1 << 1,    /* argv could not be read from the new mm */
	EDR_F_CWD_TRUNCATED = 1 << 2,      /* cwd deeper or longer than the walk allows */
	EDR_F_CWD_READ_ERROR = 1 << 3,     /* a cwd component could not be read */
	EDR_F_FILENAME_TRUNCATED = 1 << 4, /* filename longer than EDR_PATH_MAX */
	EDR_F_FILENAME_READ_ERROR = 1 << 5,
	EDR_F_EXE_TRUNCATED = 1 << 6,      /* exe path deeper or longer than the walk allows */
	EDR_F_EXE_READ_ERROR = 1 << 7,
};

#define EDR_F_READ_ERRORS \
	(EDR_F_ARGV_READ_ERROR | EDR_F_CWD_READ_ERROR | EDR_F_FILENAME_READ_ERROR | EDR_F_EXE_READ_ERROR)
#define EDR_F_PATH_TRUNCATED (EDR_F_CWD_TRUNCATED | EDR_F_FILENAME_TRUNCATED | EDR_F_EXE_TRUNCATED)

/*
 * One ring buffer record. Fork and exit records are exactly sizeof(struct edr_event); exec records
 * carry `data` sized to what was read, in this order:
 *   filename  filename_len bytes, NUL-terminated (the path given to execve, resolved by user space
 *             against cwd when relative)
 *   cwd       cwd_len bytes: the path components leaf first, each NUL-terminated (the kernel walks
 *             from the leaf up; user space reverses them, so the BPF side keeps no second buffer)
 *   exe       exe_len bytes: the executed file (mm->exe_file: symlinks resolved, the interpreter
 *             for a script), components leaf first like cwd
 *   argv      argv_len bytes copied from arg_start (NUL-separated arguments)
 */
struct edr_event {
	unsigned int kind;          /* enum edr_event_kind */
	unsigned int size;          /* bytes of this record, data included */
	unsigned long long time_ns; /* bpf_ktime_get_boot_ns() at the event */
	unsigned long long start_time_ns; /* task->start_boottime: ns since boot */
	unsigned long long cgroup_id;     /* cgroup v2 id (kernfs node id) */
	unsigned int pid;  /* tgid */
	unsigned int tid;  /* thread id */
	unsigned int ppid; /* real_parent's tgid */
	unsigned int uid;
	unsigned int euid;
	unsigned int gid;
	unsigned int login_uid;  /* audit loginuid, 4294967295 when unset */
	unsigned int session_id; /* audit session id */
	int exit_code;           /* exit: task->exit_code (status << 8 | signal) */
	unsigned int flags;      /* enum edr_event_flags */
	unsigned int filename_len;
	unsigned int cwd_len;
	unsigned int argv_len;      /* bytes of argv in data */
	unsigned int argv_full_len; /* arg_end - arg_start: the full argv length, even when truncated */
	unsigned int exe_len;
	unsigned int reserved; /* keeps data 8-byte aligned */
	char comm[EDR_COMM_LEN];
	char data[];
};

/* Index of each per-CPU counter in the `counters` map (a PERCPU_ARRAY of unsigned long long). */
enum edr_counter {
	EDR_C_SEEN = 0,           /* events the programs tried to emit (all kinds) */
	EDR_C_RING_DROPS,         /* of those, lost because the ring buffer was full */
	EDR_C_EXEC_SEEN,
	EDR_C_FORK_SEEN,
	EDR_C_EXIT_SEEN,
	EDR_C_ARGV_TRUNCATED,     /* exec records with EDR_F_ARGV_TRUNCATED */
	EDR_C_PATH_TRUNCATED,     /* exec records with a truncated filename, cwd or exe path */
	EDR_C_READ_ERRORS,        /* exec records with any *_READ_ERROR flag */
	EDR_C_MAX,
};

#endif /* EDR_EVENTS_H */
