// lockFile / unlockFile: an exclusive flock(2) on a file, for what several Lodger processes
// on one host must do one at a time (handing out jail uids). The kernel drops the lock
// when the holder dies, so a crashed process never leaves it held.
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <sys/file.h>
#include <unistd.h>

namespace lodger {
namespace {

// lockFile(path): opens (creating, 0600) and locks it, blocking; returns the descriptor.
Napi::Value LockFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "lockFile(path)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    Napi::Error::New(env, "lock " + path + ": open: " + strerror(errno)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int r;
  do r = flock(fd, LOCK_EX); while (r != 0 && errno == EINTR);
  if (r != 0) {
    std::string e = strerror(errno);
    close(fd);
    Napi::Error::New(env, "lock " + path + ": flock: " + e).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

// unlockFile(fd): closing the descriptor drops the lock.
Napi::Value UnlockFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "unlockFile(fd)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  close(info[0].As<Napi::Number>().Int32Value());
  return env.Undefined();
}

}  // namespace

void InitLock(Napi::Env env, Napi::Object exports) {
  exports.Set("lockFile", Napi::Function::New(env, LockFile));
  exports.Set("unlockFile", Napi::Function::New(env, UnlockFile));
}

}  // namespace lodger
