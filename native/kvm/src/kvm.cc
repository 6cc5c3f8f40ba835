// lodger_kvm: the few things Node cannot do itself. Probe /dev/kvm (API version, vCPU
// limits, which vendor module backs it) and pin a thread to a set of CPUs; idmapped
// mounts for the gVisor jail are in idmap.cc, file locks in lock.cc.
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sched.h>
#include <string>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace lodger {
void InitIdmap(Napi::Env env, Napi::Object exports);
void InitLock(Napi::Env env, Napi::Object exports);
}

namespace {

bool DirExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// probe(devPath = "/dev/kvm", sysModuleDir = "/sys/module") -> {...}
Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "/dev/kvm";
  std::string mods = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "/sys/module";
  Napi::Object out = Napi::Object::New(env);

  // Which vendor module provides /dev/kvm: kvm_pvm boots only PVM-enlightened guests.
  Napi::Value vendor = env.Null();
  for (const char* m : {"kvm_pvm", "kvm_intel", "kvm_amd"}) {
    if (DirExists(mods + "/" + m)) { vendor = Napi::String::New(env, m); break; }
  }
  out.Set("vendor", vendor);
  out.Set("device", Napi::String::New(env, dev));

  int fd = open(dev.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    out.Set("available", Napi::Boolean::New(env, false));
    out.Set("error", Napi::String::New(env, std::string(dev) + ": " + strerror(errno)));
    return out;
  }
  int api = ioctl(fd, KVM_GET_API_VERSION, 0);
  int nr = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS);
  int max = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
  close(fd);
  out.Set("available", Napi::Boolean::New(env, api == KVM_API_VERSION));
  out.Set("apiVersion", Napi::Number::New(env, api));
  // KVM_CAP_MAX_VCPUS of 0 means "same as NR_VCPUS" (Documentation/virt/kvm/api.rst).
  out.Set("recommendedVcpus", Napi::Number::New(env, nr > 0 ? nr : 4));
  out.Set("maxVcpus", Napi::Number::New(env, max > 0 ? max : (nr > 0 ? nr : 4)));
  if (api != KVM_API_VERSION) out.Set("error", Napi::String::New(env, "unexpected KVM API version " + std::to_string(api)));
  return out;
}

// pinThread(tid, cpus: number[]) -> undefined; throws with errno text.
Napi::Value PinThread(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsArray()) {
    Napi::TypeError::New(env, "pinThread(tid: number, cpus: number[])").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  pid_t tid = info[0].As<Napi::Number>().Int32Value();
  Napi::Array cpus = info[1].As<Napi::Array>();
  cpu_set_t set;
  CPU_ZERO(&set);
  for (uint32_t i = 0; i < cpus.Length(); i++) {
    Napi::Value v = cpus[i];
    int c = v.As<Napi::Number>().Int32Value();
    if (c < 0 || c >= CPU_SETSIZE) {
      Napi::RangeError::New(env, "cpu index out of range").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    CPU_SET(c, &set);
  }
  if (sched_setaffinity(tid, sizeof(set), &set) != 0) {
    Napi::Error::New(env, std::string("sched_setaffinity(") + std::to_string(tid) + "): " + strerror(errno))
        .ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

// threadAffinity(tid) -> number[]
Napi::Value ThreadAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(tid, sizeof(set), &set) != 0) {
    Napi::Error::New(env, std::string("sched_getaffinity: ") + strerror(errno)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &set)) out.Set(n++, Napi::Number::New(env, c));
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("probe", Napi::Function::New(env, Probe));
  exports.Set("pinThread", Napi::Function::New(env, PinThread));
  exports.Set("threadAffinity", Napi::Function::New(env, ThreadAffinity));
  lodger::InitIdmap(env, exports);
  lodger::InitLock(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(lodger_kvm, Init)
