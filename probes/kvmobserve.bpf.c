// SPDX-License-Identifier: GPL-2.0
/*
 * KvmObserve's in-kernel aggregation: one program per kvm tracepoint the agent reads, counting into a per-CPU hash
 * of (VMM pid, thread, vCPU, family, label1, label2) -> u64. Nothing per event goes to user space; the agent reads
 * the maps when it is scraped.
 *
 * Field offsets are not compiled in. The loader reads each event's format file and fills `cfg` (a read-only global)
 * before load, so one object works on every kernel whose kvm events carry the fields. A field of size 0 is absent.
 *
 * The families, labels and histogram buckets are the agent's own (src/KvmObserve.Aggregation/Series): what a record
 * source computes per record, these programs compute per event, so every source gives the same series.
 * The layouts below must match src/KvmObserve.Sources/Bpf/BpfLayout.cs (checked by size at load).
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#ifndef EEXIST
#define EEXIST 17
#endif

/* MetricFamily */
enum family {
	F_EXITS = 0,
	F_FAILED_VM_ENTRIES = 1,
	F_USERSPACE_EXITS = 2,
	F_PIO = 3,
	F_MMIO = 4,
	F_MSR = 5,
	F_CPUID = 6,
	F_EMULATED = 7,
	F_INJECTED = 8,
	F_HALT_WAKEUPS = 9,
	F_HALT_POLL_CHANGES = 10,
	F_MMU_PAGE_FAULTS = 11,
	F_MMU_EVENTS = 12,
	F_EXIT_LATENCY = 13,
	F_USERSPACE_LATENCY = 14,
	F_HALT_DURATION = 15,
};

/* KvmEventKind */
enum kind {
	K_EXIT = 1, K_ENTRY, K_USERSPACE_EXIT, K_PIO, K_MMIO, K_MSR, K_CPUID, K_EMULATE, K_INJECTED, K_WAKEUP,
	K_HALT_POLL, K_PAGE_FAULT, K_FAST_PAGE_FAULT,
};

/* kvmo_stats slots past the per-kind event counts (1..31) */
enum stat {
	S_MAP_FULL = 32,        /* an increment the counts map had no room for, even under "other" */
	S_EXIT_UNMATCHED = 33,  /* a kvm_exit whose kvm_entry never came (another exit came first) */
	S_EXIT_TOO_LONG = 34,   /* a pair longer than the horizon: not one exit's handling */
	S_STATE_FULL = 35,      /* a thread the state map could not take */
	S_NEW_SERIES = 36,      /* series created in kvmo_counts: the agent looks for new threads when it grows */
	S_FAMILY_FULL = 40,     /* 40 + family: S_MAP_FULL by family, so each family's counts add up with its losses */
	S_SLOTS = 56,
};

#define OTHER_KEY 0xffffffffu
#define OTHER_PAGE 0xffffffffffffffffull
#define NO_VCPU (-1)
#define SUM_SLOT 0xff
#define FIRST_BOUND_NS 250ull
#define BOUNDS 23
#define UNKNOWN_WINDOW 0x100 /* label1 of a halt whose poll window is not known here: 0x100 | waited */

struct fld {
	__u16 off;
	__u16 size; /* 0: the field is absent in this kernel's format */
};

struct config {
	__u32 filter;     /* bit 0: only pids in kvmo_pids */
	__u32 implied_isa;/* kvm_exit formats without isa */
	__u64 horizon_ns; /* a kvm_exit to kvm_entry pair longer than this is dropped */
	struct fld exit_reason, exit_isa, exit_vcpu;
	struct fld entry_vcpu;
	struct fld uexit_reason, uexit_errno;
	struct fld pio_rw, pio_port;
	struct fld mmio_type, mmio_gpa;
	struct fld msr_write, msr_ecx;
	struct fld cpuid_function;
	struct fld inj_exception;
	struct fld wake_ns, wake_waited, wake_valid;
	struct fld poll_grow, poll_vcpu, poll_new, poll_old;
	struct fld pf_vcpu, pf_error;
	struct fld fpf_vcpu, fpf_ret;
};

const volatile struct config cfg = {};

struct key {
	__u32 tgid;
	__u32 tid;
	__s32 vcpu;
	__u32 family;
	__u32 label1;
	__u32 pad;
	__u64 label2;
};

/* What a thread is in the middle of: an exit being handled, a round trip to user space. Task-local storage: found
 * from the task itself (no hash lookup on the events that only need to know whether a trip is open) and freed with
 * the thread. Touched only by programs running on that thread. */
struct tlocal {
	__u64 exit_ts;
	__u32 exit_reason;
	__u32 exit_isa;
	__u64 user_ts;
	__u32 user_reason;
	__u32 user_class;
	__u32 vcpu1;        /* vCPU + 1 from the last event that named it (kvm_exit, kvm_entry, page faults); 0: not
	                     * known (task storage starts zeroed) */
	__u32 pad;
};

/* A vCPU thread's halt-polling state, which the agent reads (to classify halts counted before the window was known
 * here): by tid, in a hash only the halt programs touch. */
struct tstate {
	__s64 poll_ns;      /* the halt-poll window now; -1 until a kvm_halt_poll_ns says */
	__s64 poll_at_halt; /* the window the current halt started with, when it changed during it; -1 otherwise */
	__s64 first_old;    /* the old value of the thread's first kvm_halt_poll_ns: the window of halts before it */
	__s32 vcpu;
	__u32 tgid;
};

struct task_struct;

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tlocal);
} kvmo_tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 32768); /* the loader sets it from --bpf-map-entries */
	__type(key, struct key);
	__type(value, __u64);
} kvmo_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct tstate);
} kvmo_threads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, S_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} kvmo_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} kvmo_pids SEC(".maps");


/* Reads a field of the event at the offset the loader found in its format file. The field is named by pointer, so
 * its offset and size are read as volatile scalars at run time: a by-value copy of a const volatile struct is an
 * aggregate copy the compiler may fold to the zeroes of its initializer, losing the read entirely. */
static __always_inline __u64 rd(void *ctx, const volatile struct fld *f)
{
	__u64 v = 0;
	__u32 size = f->size, off = f->off;
	if (size == 0 || size > 8)
		return 0;
	bpf_probe_read_kernel(&v, size, (char *)ctx + off);
	return v; /* little-endian: the low bytes are the field */
}

static __always_inline void stat(__u32 slot, __u64 n)
{
	__u64 *p = bpf_map_lookup_elem(&kvmo_stats, &slot);
	if (p)
		*p += n;
}

static __always_inline bool wanted(__u32 tgid)
{
	if ((cfg.filter & 1) && !bpf_map_lookup_elem(&kvmo_pids, &tgid))
		return false;
	return true;
}

static __always_inline bool try_add(struct key *k, __u64 v)
{
	__u64 *p = bpf_map_lookup_elem(&kvmo_counts, k);
	if (p) {
		*p += v;
		return true;
	}
	long err = bpf_map_update_elem(&kvmo_counts, k, &v, BPF_NOEXIST);
	if (err == 0) {
		stat(S_NEW_SERIES, 1);
		return true;
	}
	if (err == -EEXIST) { /* another CPU made it just now: this CPU's slot is there, zeroed */
		p = bpf_map_lookup_elem(&kvmo_counts, k);
		if (p) {
			*p += v;
			return true;
		}
	}
	return false;
}

static __always_inline bool keyed(__u32 family)
{
	return family == F_PIO || family == F_MMIO || family == F_MSR || family == F_CPUID || family == F_INJECTED;
}

/* Adds v to a series. A full map takes a guest-chosen key under "other" (as past the top K); what still finds no
 * room is counted in S_MAP_FULL, never dropped silently. */
static __always_inline void add(struct key *k, __u64 v)
{
	if (try_add(k, v))
		return;
	if (keyed(k->family)) {
		if (k->family == F_MMIO)
			k->label2 = OTHER_PAGE;
		else
			k->label1 = OTHER_KEY;
		if (try_add(k, v))
			return;
	}
	stat(S_MAP_FULL, 1);
	stat(S_FAMILY_FULL + k->family, 1);
}

static __always_inline void count(__u32 tgid, __u32 tid, __s32 vcpu, __u32 family, __u32 label1, __u64 label2)
{
	struct key k = {.tgid = tgid, .tid = tid, .vcpu = vcpu, .family = family, .label1 = label1, .label2 = label2};
	add(&k, 1);
}

static __always_inline int ilog2(__u64 v)
{
	int r = 0;
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r;
}

/* LatencyBuckets.Index: upper bounds 250 ns x 2^i, i = 0..22, then +Inf */
static __always_inline __u32 bucket(__u64 ns)
{
	if (ns <= FIRST_BOUND_NS)
		return 0;
	int i = ilog2((ns - 1) / FIRST_BOUND_NS) + 1;
	return i < BOUNDS ? i : BOUNDS;
}

static __always_inline void observe(__u32 tgid, __u32 tid, __u32 family, __u32 label1, __u64 extra, __u64 ns)
{
	struct key k = {.tgid = tgid, .tid = tid, .vcpu = NO_VCPU, .family = family, .label1 = label1};
	k.label2 = extra << 8 | bucket(ns);
	add(&k, 1);
	k.label2 = extra << 8 | SUM_SLOT;
	k.label1 = label1; /* add() may have turned it to "other" */
	add(&k, ns);
}

static __always_inline struct tstate *state(__u32 tid, __u32 tgid)
{
	struct tstate *s = bpf_map_lookup_elem(&kvmo_threads, &tid);
	if (s)
		return s;
	struct tstate fresh = {.poll_ns = -1, .poll_at_halt = -1, .first_old = -1, .vcpu = NO_VCPU, .tgid = tgid};
	bpf_map_update_elem(&kvmo_threads, &tid, &fresh, BPF_NOEXIST); /* LRU: room is made by evicting the idlest */
	s = bpf_map_lookup_elem(&kvmo_threads, &tid);
	if (!s)
		stat(S_STATE_FULL, 1);
	return s;
}

/* The thread's trip state; created only by the programs that open a trip (kvm_exit, kvm_userspace_exit). */
static __always_inline struct tlocal *local(bool create)
{
	return bpf_task_storage_get(&kvmo_tasks, bpf_get_current_task_btf(), 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* Any event of a thread means it is back in KVM_RUN: its userspace round trip, if one is open, ends here. */
static __always_inline void end_userspace(struct tlocal *l, __u32 tgid, __u32 tid)
{
	if (l->user_ts == 0)
		return;
	__u64 ns = bpf_ktime_get_ns() - l->user_ts;
	l->user_ts = 0;
	observe(tgid, tid, F_USERSPACE_LATENCY, l->user_reason, l->user_class, ns);
}

struct who {
	__u32 tgid, tid;
	struct tlocal *l;
};

/* Common start of every program: the filter, the event count, the thread's trip state (ending its userspace trip).
 * Programs that open a trip create the state; the others only look (nothing to end on a thread that never opened one). */
static __always_inline bool begin(struct who *w, __u32 kind, bool create)
{
	__u64 id = bpf_get_current_pid_tgid();
	w->tgid = id >> 32;
	w->tid = (__u32)id;
	if (!wanted(w->tgid))
		return false;
	stat(kind, 1);
	w->l = local(create);
	if (w->l)
		end_userspace(w->l, w->tgid, w->tid);
	else if (create)
		stat(S_STATE_FULL, 1);
	return true;
}

/* What every program returns: non-zero lets the kernel go on to the tracepoint's perf events. With 0 it skips them
 * all, and perf stat or perf record of the same tracepoint (a user's, or the agent's perf-count) count nothing. */
#define PASS 1

SEC("tracepoint/kvm/kvm_exit")
int kvmo_exit(void *ctx)
{
	struct who w;
	if (!begin(&w, K_EXIT, true))
		return PASS;
	__u32 raw = rd(ctx, &cfg.exit_reason);
	__u32 isa = cfg.exit_isa.size ? (__u32)rd(ctx, &cfg.exit_isa) : cfg.implied_isa;
	__s32 vcpu = cfg.exit_vcpu.size ? (__s32)rd(ctx, &cfg.exit_vcpu) : NO_VCPU;
	__u32 reason = raw;
	if (isa == 1) { /* VMX: basic reason in bits 0-15, bit 31 = the VM entry failed */
		reason = raw & 0xffff;
		if (raw & 0x80000000u)
			count(w.tgid, w.tid, vcpu, F_FAILED_VM_ENTRIES, reason, 0);
	}
	count(w.tgid, w.tid, vcpu, F_EXITS, reason, isa);
	struct tlocal *l = w.l;
	if (!l)
		return PASS;
	if (vcpu >= 0)
		l->vcpu1 = vcpu + 1;
	if (l->exit_ts != 0)
		stat(S_EXIT_UNMATCHED, 1);
	l->exit_ts = bpf_ktime_get_ns();
	l->exit_reason = reason;
	l->exit_isa = isa;
	return PASS;
}

SEC("tracepoint/kvm/kvm_entry")
int kvmo_entry(void *ctx)
{
	struct who w;
	if (!begin(&w, K_ENTRY, false))
		return PASS;
	struct tlocal *l = w.l;
	if (!l || l->exit_ts == 0)
		return PASS; /* no exit of this thread seen since the programs were attached */
	if (cfg.entry_vcpu.size)
		l->vcpu1 = (__u32)rd(ctx, &cfg.entry_vcpu) + 1;
	__u64 ns = bpf_ktime_get_ns() - l->exit_ts;
	l->exit_ts = 0;
	if (ns > cfg.horizon_ns)
		stat(S_EXIT_TOO_LONG, 1);
	else
		observe(w.tgid, w.tid, F_EXIT_LATENCY, l->exit_reason, l->exit_isa, ns);
	return PASS;
}

SEC("tracepoint/kvm/kvm_userspace_exit")
int kvmo_uexit(void *ctx)
{
	struct who w;
	if (!begin(&w, K_USERSPACE_EXIT, true))
		return PASS;
	__u32 reason = rd(ctx, &cfg.uexit_reason);
	__s32 err = (__s32)rd(ctx, &cfg.uexit_errno);
	/* an errno instead of an exit: -EINTR is a signal-driven restart, anything else a failed KVM_RUN */
	__u32 cls = err >= 0 ? 0 : err == -4 ? 1 : 2;
	if (cls)
		reason = 0;
	count(w.tgid, w.tid, NO_VCPU, F_USERSPACE_EXITS, reason, cls);
	if (w.l) {
		w.l->user_ts = bpf_ktime_get_ns();
		w.l->user_reason = reason;
		w.l->user_class = cls;
	}
	return PASS;
}

SEC("tracepoint/kvm/kvm_pio")
int kvmo_pio(void *ctx)
{
	struct who w;
	if (!begin(&w, K_PIO, false))
		return PASS;
	count(w.tgid, w.tid, NO_VCPU, F_PIO, rd(ctx, &cfg.pio_port), rd(ctx, &cfg.pio_rw) ? 1 : 0);
	return PASS;
}

SEC("tracepoint/kvm/kvm_mmio")
int kvmo_mmio(void *ctx)
{
	struct who w;
	if (!begin(&w, K_MMIO, false))
		return PASS;
	count(w.tgid, w.tid, NO_VCPU, F_MMIO, rd(ctx, &cfg.mmio_type), rd(ctx, &cfg.mmio_gpa) >> 12);
	return PASS;
}

SEC("tracepoint/kvm/kvm_msr")
int kvmo_msr(void *ctx)
{
	struct who w;
	if (!begin(&w, K_MSR, false))
		return PASS;
	count(w.tgid, w.tid, NO_VCPU, F_MSR, rd(ctx, &cfg.msr_ecx), rd(ctx, &cfg.msr_write) ? 1 : 0);
	return PASS;
}

SEC("tracepoint/kvm/kvm_cpuid")
int kvmo_cpuid(void *ctx)
{
	struct who w;
	if (!begin(&w, K_CPUID, false))
		return PASS;
	count(w.tgid, w.tid, NO_VCPU, F_CPUID, rd(ctx, &cfg.cpuid_function), 0);
	return PASS;
}

SEC("tracepoint/kvm/kvm_emulate_insn")
int kvmo_emulate(void *ctx)
{
	struct who w;
	if (!begin(&w, K_EMULATE, false))
		return PASS;
	count(w.tgid, w.tid, NO_VCPU, F_EMULATED, 0, 0);
	return PASS;
}

SEC("tracepoint/kvm/kvm_inj_exception")
int kvmo_inj_exc(void *ctx)
{
	struct who w;
	if (!begin(&w, K_INJECTED, false))
		return PASS;
	count(w.tgid, w.tid, NO_VCPU, F_INJECTED, rd(ctx, &cfg.inj_exception), 0);
	return PASS;
}

/* HeldHalts.Outcome: 0 poll_success, 1 poll_fail, 2 waited, 3 immediate */
static __always_inline __u32 outcome(bool waited, __s64 poll)
{
	if (poll == 0)
		return waited ? 2 : 3;
	return waited ? 1 : 0;
}

SEC("tracepoint/kvm/kvm_vcpu_wakeup")
int kvmo_wakeup(void *ctx)
{
	struct who w;
	if (!begin(&w, K_WAKEUP, false))
		return PASS;
	__u64 ns = rd(ctx, &cfg.wake_ns);
	bool waited = rd(ctx, &cfg.wake_waited) & 0xff;
	__s64 poll = -1;
	__s32 vcpu = w.l ? (__s32)w.l->vcpu1 - 1 : NO_VCPU;
	struct tstate *s = state(w.tid, w.tgid);
	if (s) {
		/* A change made as this halt ended was traced just before it: its old value is the window the halt
		 * started with; without one, the window is the one the last change left. */
		poll = s->poll_at_halt >= 0 ? s->poll_at_halt : s->poll_ns;
		s->poll_at_halt = -1;
		if (s->vcpu >= 0)
			vcpu = s->vcpu;
	}
	/* Not known here (no kvm_halt_poll_ns of the thread yet): the agent classifies it once it knows the window. */
	__u32 label = poll < 0 ? UNKNOWN_WINDOW | waited : outcome(waited, poll);
	count(w.tgid, w.tid, vcpu, F_HALT_WAKEUPS, label, 0);
	observe(w.tgid, w.tid, F_HALT_DURATION, label, 0, ns);
	return PASS;
}

SEC("tracepoint/kvm/kvm_halt_poll_ns")
int kvmo_halt_poll(void *ctx)
{
	struct who w;
	if (!begin(&w, K_HALT_POLL, false))
		return PASS;
	__s32 vcpu = (__s32)rd(ctx, &cfg.poll_vcpu);
	__s64 old = (__u32)rd(ctx, &cfg.poll_old);
	struct tstate *s = state(w.tid, w.tgid);
	if (s) {
		s->vcpu = vcpu;
		if (s->first_old < 0)
			s->first_old = old;
		if (s->poll_at_halt < 0)
			s->poll_at_halt = old;
		s->poll_ns = (__u32)rd(ctx, &cfg.poll_new);
	}
	count(w.tgid, w.tid, vcpu, F_HALT_POLL_CHANGES, rd(ctx, &cfg.poll_grow) & 0xff ? 1 : 0, 0);
	return PASS;
}

/* AggregatingSink.ClassifyFault: PFERR_* bits of the error code */
static __always_inline __u32 fault_kind(__u64 e)
{
	if (e & (1 << 3))
		return 6; /* reserved bits */
	bool present = e & 1;
	if (e & (1 << 4))
		return present ? 5 : 2;
	if (e & (1 << 1))
		return present ? 4 : 1;
	return present ? 3 : 0;
}

SEC("tracepoint/kvm/kvm_page_fault")
int kvmo_page_fault(void *ctx)
{
	struct who w;
	if (!begin(&w, K_PAGE_FAULT, false))
		return PASS;
	__s32 vcpu = cfg.pf_vcpu.size ? (__s32)rd(ctx, &cfg.pf_vcpu) : NO_VCPU;
	if (w.l && vcpu >= 0)
		w.l->vcpu1 = vcpu + 1;
	count(w.tgid, w.tid, vcpu, F_MMU_PAGE_FAULTS, fault_kind(rd(ctx, &cfg.pf_error)), 0);
	return PASS;
}

SEC("tracepoint/kvmmmu/fast_page_fault")
int kvmo_fast_pf(void *ctx)
{
	struct who w;
	if (!begin(&w, K_FAST_PAGE_FAULT, false))
		return PASS;
	__s32 vcpu = (__s32)rd(ctx, &cfg.fpf_vcpu);
	__s32 ret = (__s32)rd(ctx, &cfg.fpf_ret);
	if (w.l && vcpu >= 0)
		w.l->vcpu1 = vcpu + 1;
	/* RET_PF_FIXED 5, RET_PF_SPURIOUS 6 -> fast_fixed 7, fast_spurious 8, else fast_not_fixed 9 */
	__u32 kind = ret == 5 ? 7 : ret == 6 ? 8 : 9;
	count(w.tgid, w.tid, vcpu, F_MMU_PAGE_FAULTS, kind, 0);
	return PASS;
}

/* Every count-only kvmmmu event: one program, attached once per event with its KvmEventKind as the cookie. */
SEC("tracepoint/kvmmmu/kvm_mmu_get_page")
int kvmo_mmu(void *ctx)
{
	__u32 kind = (__u32)bpf_get_attach_cookie(ctx);
	struct who w;
	if (kind == 0 || kind >= 32 || !begin(&w, kind, false))
		return PASS;
	count(w.tgid, w.tid, NO_VCPU, F_MMU_EVENTS, kind, 0);
	return PASS;
}

char LICENSE[] SEC("license") = "GPL";
