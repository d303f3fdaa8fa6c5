// Native side of the exec capture: loads and attaches bpf/exec.bpf.c through its libbpf skeleton,
// drains the ring buffer on its own thread into a bounded queue, and decodes records into JS objects
// when JavaScript takes them. native/index.ts is the only caller.
#include <napi.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

extern "C" {
#include "edr_events.h"
#include "exec.skel.h"
}

namespace {

static_assert(offsetof(edr_event, data) == sizeof(edr_event), "data must follow the fixed part");
static_assert(sizeof(edr_event) % 8 == 0, "the fixed part keeps 64-bit alignment");

constexpr const char* kBtfPath = "/sys/kernel/btf/vmlinux";

// ---- errors -------------------------------------------------------------------------------------

// Errors carry a stable EDR_NATIVE_* code; index.ts turns them into EdrError.
Napi::Error CodedError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

// libbpf reports load/verifier failures through its print callback: keep the warnings of the
// current open() so the error can say why.
std::mutex g_log_mu;
std::string g_log;
bool g_log_on = false;

int LibbpfPrint(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  va_list copy;
  va_copy(copy, args);
  int n = vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  if (n <= 0) return n;
  std::string line(static_cast<size_t>(n) + 1, '\0');
  vsnprintf(line.data(), line.size(), fmt, args);
  line.resize(static_cast<size_t>(n));
  std::lock_guard<std::mutex> lock(g_log_mu);
  if (g_log_on) g_log.append(line);
  if (g_log.size() > 256 * 1024) g_log.erase(0, g_log.size() - 128 * 1024);  // keep the tail
  return n;
}

std::string TakeLog() {
  std::lock_guard<std::mutex> lock(g_log_mu);
  std::string out;
  out.swap(g_log);
  g_log_on = false;
  // The verifier log ends with the cause: keep the tail.
  if (out.size() > 4000) out = "..." + out.substr(out.size() - 4000);
  return out;
}

bool HasCap(const __user_cap_data_struct data[2], int cap) {
  return (data[cap / 32].effective & (1u << (cap % 32))) != 0;
}

// Missing privilege, said before libbpf fails with a bare EPERM.
std::string MissingPrivilege() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (syscall(SYS_capget, &hdr, data) != 0) return "";  // cannot tell: let the load decide
  constexpr int kCapSysAdmin = 21, kCapPerfmon = 38, kCapBpf = 39;
  if (HasCap(data, kCapSysAdmin)) return "";
  if (HasCap(data, kCapBpf) && HasCap(data, kCapPerfmon)) return "";
  std::string missing;
  if (!HasCap(data, kCapBpf)) missing += "CAP_BPF";
  if (!HasCap(data, kCapPerfmon)) missing += missing.empty() ? "CAP_PERFMON" : " and CAP_PERFMON";
  return missing;
}

// ---- decoding -----------------------------------------------------------------------------------

std::string CString(const char* p, size_t max) { return std::string(p, strnlen(p, max)); }

// Paths arrive leaf first ("b\0a\0" for /a/b): reverse the components. A truncated path keeps the
// components nearest the leaf and no leading "/", so it cannot pass for a full path.
std::string DecodeLeafFirst(const char* p, size_t len, bool truncated) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < len) {
    size_t n = strnlen(p + i, len - i);
    if (n > 0) parts.emplace_back(p + i, n);
    i += n + 1;
  }
  std::string out;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (!truncated || it != parts.rbegin()) out += "/";
    out += *it;
  }
  return out.empty() && !truncated ? "/" : out;
}

// Relative filenames (./x, bin/x) resolved lexically against cwd, as the kernel saw them.
std::string ResolveFilename(const std::string& filename, const std::string& cwd) {
  if (filename.empty() || filename[0] == '/') return filename;
  std::string joined = cwd + "/" + filename;
  std::vector<std::string> parts;
  size_t i = 0;
  while (i <= joined.size()) {
    size_t j = joined.find('/', i);
    if (j == std::string::npos) j = joined.size();
    std::string part = joined.substr(i, j - i);
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    i = j + 1;
  }
  std::string out;
  for (auto& part : parts) out += "/" + part;
  return out.empty() ? "/" : out;
}

Napi::Array DecodeArgv(Napi::Env env, const char* p, size_t len) {
  Napi::Array argv = Napi::Array::New(env);
  uint32_t k = 0;
  size_t i = 0;
  while (i < len) {
    size_t n = strnlen(p + i, len - i);
    argv.Set(k++, Napi::String::New(env, p + i, n));  // a cut last argument is kept as read
    i += n + 1;
  }
  return argv;
}

Napi::Object Decode(Napi::Env env, const uint8_t* rec, size_t size) {
  edr_event ev;
  memcpy(&ev, rec, sizeof(ev));  // records are byte-packed in the batch: copy out, no aligned loads
  Napi::Object o = Napi::Object::New(env);
  const char* kind = ev.kind == EDR_EVENT_EXEC ? "exec" : ev.kind == EDR_EVENT_FORK ? "fork" : "exit";
  o.Set("kind", kind);
  o.Set("pid", ev.pid);
  o.Set("tid", ev.tid);
  o.Set("ppid", ev.ppid);
  o.Set("uid", ev.uid);
  o.Set("euid", ev.euid);
  o.Set("gid", ev.gid);
  o.Set("loginUid", ev.login_uid);
  o.Set("sessionId", ev.session_id);
  o.Set("comm", CString(ev.comm, sizeof(ev.comm)));
  o.Set("cgroupId", Napi::BigInt::New(env, static_cast<uint64_t>(ev.cgroup_id)));
  o.Set("startTimeNs", Napi::BigInt::New(env, static_cast<uint64_t>(ev.start_time_ns)));
  o.Set("timeNs", Napi::BigInt::New(env, static_cast<uint64_t>(ev.time_ns)));
  if (ev.kind == EDR_EVENT_EXIT) {
    o.Set("exitCode", ev.exit_code);
  } else if (ev.kind == EDR_EVENT_EXEC) {
    const char* data = reinterpret_cast<const char*>(rec) + sizeof(edr_event);
    size_t avail = size - sizeof(edr_event);
    size_t flen = std::min<size_t>(ev.filename_len, avail);
    size_t clen = std::min<size_t>(ev.cwd_len, avail - flen);
    size_t xlen = std::min<size_t>(ev.exe_len, avail - flen - clen);
    size_t alen = std::min<size_t>(ev.argv_len, avail - flen - clen - xlen);
    // An empty walk is the root, unless the walk failed: then the path is unknown ("").
    std::string cwd = clen == 0 && (ev.flags & EDR_F_CWD_READ_ERROR)
                          ? ""
                          : DecodeLeafFirst(data + flen, clen, ev.flags & EDR_F_CWD_TRUNCATED);
    std::string exe = xlen == 0 && (ev.flags & EDR_F_EXE_READ_ERROR)
                          ? ""
                          : DecodeLeafFirst(data + flen + clen, xlen, ev.flags & EDR_F_EXE_TRUNCATED);
    std::string filename = CString(data, flen);
    // Resolve a relative filename only against a cwd known in full.
    if (!cwd.empty() && !(ev.flags & (EDR_F_CWD_TRUNCATED | EDR_F_CWD_READ_ERROR)))
      filename = ResolveFilename(filename, cwd);
    o.Set("filename", filename);
    o.Set("exePath", exe);
    o.Set("cwd", cwd);
    o.Set("argv", DecodeArgv(env, data + flen + clen + xlen, alen));
    o.Set("argvTruncated", (ev.flags & EDR_F_ARGV_TRUNCATED) != 0);
    o.Set("argvBytes", ev.argv_full_len);
    o.Set("cwdTruncated", (ev.flags & EDR_F_CWD_TRUNCATED) != 0);
    o.Set("filenameTruncated", (ev.flags & EDR_F_FILENAME_TRUNCATED) != 0);
    o.Set("exePathTruncated", (ev.flags & EDR_F_EXE_TRUNCATED) != 0);
    o.Set("readError", (ev.flags & EDR_F_READ_ERRORS) != 0);
  }
  return o;
}

// ---- capture ------------------------------------------------------------------------------------

struct Batch {
  std::vector<uint8_t> bytes;  // records back to back, each starting with its edr_event
  uint32_t events = 0;
};

// State shared by the JS thread and the drain thread; outlives both through shared_ptr.
struct Shared {
  std::mutex mu;
  std::deque<Batch> queue;
  size_t queued_events = 0;  // under mu
  size_t queued_bytes = 0;   // under mu
  std::string error;         // under mu: the drain thread's fatal error

  size_t max_events = 65536;
  size_t max_bytes = 64 << 20;
  size_t batch_max_events = 1024;

  std::atomic<uint64_t> received{0};     // records read from the ring
  std::atomic<uint64_t> queue_drops{0};  // records dropped because the queue was full
  std::atomic<uint64_t> decode_drops{0};  // records taken off the queue whose decoding threw
  std::atomic<uint64_t> delivered{0};    // records handed to JavaScript
  std::atomic<uint64_t> batches{0};
  std::atomic<bool> stop{false};
  std::atomic<bool> notify_pending{false};

  Batch current;  // drain thread only (and the JS thread after the drain thread joined)
  Napi::ThreadSafeFunction notify;

  // Drops when the queue is full, so a stalled consumer costs counted events, never the drain.
  void Append(const void* data, size_t size) {
    received.fetch_add(1, std::memory_order_relaxed);
    size_t events, bytes;
    {
      std::lock_guard<std::mutex> lock(mu);
      events = queued_events;
      bytes = queued_bytes;
    }
    if (events + current.events >= max_events || bytes + current.bytes.size() + size > max_bytes ||
        size < sizeof(edr_event)) {
      queue_drops.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const uint8_t* p = static_cast<const uint8_t*>(data);
    size_t at = current.bytes.size();
    current.bytes.insert(current.bytes.end(), p, p + size);
    // The ring's length is authoritative: Take() walks the batch by this field.
    uint32_t len = static_cast<uint32_t>(size);
    memcpy(current.bytes.data() + at + offsetof(edr_event, size), &len, sizeof(len));
    current.events++;
    if (current.events >= batch_max_events) Flush();
  }

  void Flush() {
    if (current.events == 0) return;
    {
      std::lock_guard<std::mutex> lock(mu);
      queued_events += current.events;
      queued_bytes += current.bytes.size();
      queue.push_back(std::move(current));
    }
    current = Batch();
    batches.fetch_add(1, std::memory_order_relaxed);
    Notify();
  }

  // One wake-up in flight at most: JS takes everything queued when it runs.
  void Notify() {
    if (!notify_pending.exchange(true)) notify.NonBlockingCall();
  }
};

int OnRecord(void* ctx, void* data, size_t size) {
  static_cast<Shared*>(ctx)->Append(data, size);
  return 0;
}

uint32_t OptU32(const Napi::Object& o, const char* key, uint32_t dflt) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return dflt;
  if (!v.IsNumber()) throw CodedError(o.Env(), "EDR_NATIVE_OPTIONS", std::string(key) + " must be a number");
  return v.As<Napi::Number>().Uint32Value();
}

class Capture : public Napi::ObjectWrap<Capture> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Capture",
                       {InstanceMethod("take", &Capture::Take), InstanceMethod("stats", &Capture::Stats),
                        InstanceMethod("close", &Capture::Close)});
  }

  // new Capture(options, onReady): loads, attaches and starts draining, or throws a coded error.
  explicit Capture(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Capture>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction())
      throw CodedError(env, "EDR_NATIVE_OPTIONS", "Capture(options, onReady) expected");
    Napi::Object opts = info[0].As<Napi::Object>();
    shared_ = std::make_shared<Shared>();
    uint32_t ring_bytes = OptU32(opts, "ringBufferBytes", 8u << 20);
    shared_->max_events = OptU32(opts, "queueMaxEvents", 65536);
    shared_->max_bytes = OptU32(opts, "queueMaxBytes", 64u << 20);
    shared_->batch_max_events = std::max<uint32_t>(1, OptU32(opts, "batchMaxEvents", 1024));
    poll_ms_ = OptU32(opts, "pollTimeoutMs", 50);
    uint32_t wakeup_bytes = OptU32(opts, "wakeupBytes", 64u << 10);
    long page = sysconf(_SC_PAGESIZE);
    if (ring_bytes < static_cast<uint32_t>(page) || (ring_bytes & (ring_bytes - 1)) != 0)
      throw CodedError(env, "EDR_NATIVE_OPTIONS",
                       "ringBufferBytes must be a power of two of at least the page size (" +
                           std::to_string(page) + "), got " + std::to_string(ring_bytes));

    std::string missing = MissingPrivilege();
    if (!missing.empty())
      throw CodedError(env, "EDR_NATIVE_PERMISSION",
                       "exec capture needs " + missing +
                           " (or CAP_SYS_ADMIN) to load eBPF programs: run the collector as root, or grant "
                           "them (systemd AmbientCapabilities=CAP_BPF CAP_PERFMON, or setcap "
                           "cap_bpf,cap_perfmon+ep on the node binary)");
    if (access(kBtfPath, R_OK) != 0)
      throw CodedError(env, "EDR_NATIVE_NO_BTF",
                       std::string("kernel BTF not readable at ") + kBtfPath + " (" + strerror(errno) +
                           "): the capture is CO-RE and needs a kernel built with CONFIG_DEBUG_INFO_BTF=y "
                           "(Debian/Ubuntu/RHEL kernels since 2020 have it); run on such a kernel, or mount "
                           "sysfs if it is not mounted");

    {
      std::lock_guard<std::mutex> lock(g_log_mu);
      g_log.clear();
      g_log_on = true;
    }
    libbpf_set_print(LibbpfPrint);
    skel_ = edr_exec__open();
    if (!skel_) Fail(env, "EDR_NATIVE_LOAD", "opening the BPF object failed", errno);
    skel_->rodata->wakeup_bytes = std::min(wakeup_bytes, ring_bytes / 2);  // never wait for a full ring
    int err = bpf_map__set_max_entries(skel_->maps.events, ring_bytes);
    if (err) Fail(env, "EDR_NATIVE_LOAD", "sizing the ring buffer failed", -err);
    err = edr_exec__load(skel_);
    if (err) Fail(env, err == -EPERM ? "EDR_NATIVE_PERMISSION" : "EDR_NATIVE_LOAD",
                  "loading the BPF programs failed (verifier, BTF or kernel version)", -err);
    err = edr_exec__attach(skel_);
    if (err) Fail(env, "EDR_NATIVE_ATTACH",
                  "attaching tp_btf/sched_process_{exec,fork,exit} failed (kernel 5.5+ needed)", -err);
    rb_ = ring_buffer__new(bpf_map__fd(skel_->maps.events), OnRecord, shared_.get(), nullptr);
    if (!rb_) Fail(env, "EDR_NATIVE_LOAD", "creating the ring buffer reader failed", errno);
    TakeLog();
    ncpus_ = libbpf_num_possible_cpus();

    shared_->notify = Napi::ThreadSafeFunction::New(
        env, info[1].As<Napi::Function>(), "edr-capture-notify", 0, 1);
    std::shared_ptr<Shared> shared = shared_;
    ring_buffer* rb = rb_;
    int poll_ms = static_cast<int>(poll_ms_);
    // The drain never waits on JavaScript: a GC pause or a slow consumer only fills the queue.
    drain_ = std::thread([shared, rb, poll_ms]() {
      while (!shared->stop.load()) {
        int n = ring_buffer__poll(rb, poll_ms);
        // Records written without a wake-up (wakeupBytes) raise no epoll event: read them on timeout.
        if (n == 0) n = ring_buffer__consume(rb);
        if (n < 0 && n != -EINTR) {
          std::lock_guard<std::mutex> lock(shared->mu);
          shared->error = std::string("polling the ring buffer failed: ") + strerror(-n);
          break;
        }
        shared->Flush();
      }
      shared->Flush();
      shared->Notify();
    });
  }

  ~Capture() override { Shutdown(); }

 private:
  [[noreturn]] void Fail(Napi::Env env, const char* code, const std::string& what, int errnum) {
    std::string log = TakeLog();
    std::string msg = what + ": " + strerror(errnum);
    if (errnum == EPERM || errnum == EACCES)
      msg += " (is kernel lockdown in confidentiality mode, or a seccomp/LSM policy denying bpf()?)";
    if (!log.empty()) msg += "\nlibbpf:\n" + log;
    Shutdown();
    throw CodedError(env, code, msg);
  }

  // take(maxEvents): decoded events queued so far (maybe none); null once closed and empty.
  Napi::Value Take(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    shared_->notify_pending.store(false);
    size_t max = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 4096;
    // Made before anything leaves the queue: a throw here loses nothing.
    Napi::Array out = Napi::Array::New(env);
    std::deque<Batch> taken;
    std::string error;
    {
      std::lock_guard<std::mutex> lock(shared_->mu);
      size_t n = 0;
      while (!shared_->queue.empty() && (n == 0 || n + shared_->queue.front().events <= max)) {
        Batch& b = shared_->queue.front();
        n += b.events;
        shared_->queued_events -= b.events;
        shared_->queued_bytes -= b.bytes.size();
        taken.push_back(std::move(b));
        shared_->queue.pop_front();
      }
      error = shared_->error;
    }
    if (taken.empty()) {
      if (!error.empty()) throw CodedError(env, "EDR_NATIVE_DRAIN", error);
      if (closed_) return env.Null();
    }
    uint32_t k = 0;
    for (const Batch& b : taken) {
      size_t off = 0;
      for (uint32_t i = 0; i < b.events; i++) {
        edr_event head;
        memcpy(&head, b.bytes.data() + off, sizeof(head));
        // These records are off the queue: one whose decoding throws (out of memory, a JS exception pending)
        // is counted, not lost with the rest of the batch. Napi::Error is a std::exception.
        try {
          out.Set(k, Decode(env, b.bytes.data() + off, head.size));
          k++;
        } catch (const std::exception&) {
          shared_->decode_drops.fetch_add(1, std::memory_order_relaxed);
        }
        off += head.size;
      }
    }
    shared_->delivered.fetch_add(k, std::memory_order_relaxed);
    return out;
  }

  void ReadKernelCounters() {
    if (!skel_) return;
    std::vector<uint64_t> vals(ncpus_);
    for (uint32_t key = 0; key < EDR_C_MAX; key++) {
      if (bpf_map__lookup_elem(skel_->maps.counters, &key, sizeof(key), vals.data(),
                               vals.size() * sizeof(uint64_t), 0) != 0)
        continue;
      uint64_t sum = 0;
      for (uint64_t v : vals) sum += v;
      kernel_[key] = sum;
    }
    // Runs skipped because the program was already running on that CPU (preemption): not in `seen`.
    uint64_t misses = 0;
    bpf_program* progs[] = {skel_->progs.edr_exec, skel_->progs.edr_fork, skel_->progs.edr_exit};
    for (bpf_program* prog : progs) {
      bpf_prog_info pinfo;
      memset(&pinfo, 0, sizeof(pinfo));
      uint32_t len = sizeof(pinfo);
      if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &pinfo, &len) == 0) misses += pinfo.recursion_misses;
    }
    kernel_misses_ = misses;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ReadKernelCounters();
    Napi::Object o = Napi::Object::New(env);
    auto num = [&](const char* k, uint64_t v) { o.Set(k, Napi::Number::New(env, static_cast<double>(v))); };
    num("seen", kernel_[EDR_C_SEEN]);
    num("execSeen", kernel_[EDR_C_EXEC_SEEN]);
    num("forkSeen", kernel_[EDR_C_FORK_SEEN]);
    num("exitSeen", kernel_[EDR_C_EXIT_SEEN]);
    num("ringDrops", kernel_[EDR_C_RING_DROPS]);
    num("kernelMisses", kernel_misses_);
    num("argvTruncated", kernel_[EDR_C_ARGV_TRUNCATED]);
    num("pathTruncated", kernel_[EDR_C_PATH_TRUNCATED]);
    num("readErrors", kernel_[EDR_C_READ_ERRORS]);
    num("received", shared_->received.load());
    num("queueDrops", shared_->queue_drops.load());
    num("decodeDrops", shared_->decode_drops.load());
    num("delivered", shared_->delivered.load());
    num("batches", shared_->batches.load());
    size_t queued;
    {
      std::lock_guard<std::mutex> lock(shared_->mu);
      queued = shared_->queued_events;
    }
    num("queued", queued);
    o.Set("closed", closed_);
    return o;
  }

  // close(): detach, let in-flight programs finish, drain what the ring still holds, keep the final
  // counters. Queued events stay takeable, so nothing received is lost by closing.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!closed_ && skel_) {
      edr_exec__detach(skel_);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      shared_->stop.store(true);
      if (drain_.joinable()) drain_.join();
      if (rb_) ring_buffer__consume(rb_);
      shared_->Flush();
      ReadKernelCounters();
    }
    Shutdown();
    return info.Env().Undefined();
  }

  void Shutdown() {
    if (shared_) shared_->stop.store(true);
    if (drain_.joinable()) drain_.join();
    if (rb_) ring_buffer__free(rb_);
    rb_ = nullptr;
    if (skel_) edr_exec__destroy(skel_);
    skel_ = nullptr;
    if (shared_ && shared_->notify && !closed_) shared_->notify.Release();
    closed_ = true;
  }

  std::shared_ptr<Shared> shared_;
  edr_exec* skel_ = nullptr;
  ring_buffer* rb_ = nullptr;
  std::thread drain_;
  uint32_t poll_ms_ = 50;
  int ncpus_ = 1;
  uint64_t kernel_[EDR_C_MAX] = {};
  uint64_t kernel_misses_ = 0;
  bool closed_ = false;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Capture", Capture::Define(env));
  exports.Set("eventVersion", Napi::Number::New(env, EDR_EVENT_VERSION));
  exports.Set("argvMaxBytes", Napi::Number::New(env, EDR_ARGV_MAX));
  return exports;
}

}  // namespace

NODE_API_MODULE(edr_capture, Init)
