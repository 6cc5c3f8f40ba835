// idmapMount: a read-only bind of one directory whose owners are shifted by a one-uid
// user namespace (container 0 -> host uid), so a gVisor sandbox's gofer, jailed as that
// uid, reads an image root whose files belong to host root. Node has no mount system
// calls; util-linux's X-mount.idmap needs 2.39 (Debian bookworm has 2.38).
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/mount.h>
#include <sched.h>
#include <string>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace lodger {

namespace {

std::string Errno(const char* what) { return std::string(what) + ": " + strerror(errno); }

bool WriteFile(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  return ok;
}

// A user namespace mapping 0 -> uid and 0 -> gid, as an fd: a child unshares one, this
// process writes its maps (root may map any host id) and keeps the fd; the child exits.
// The child only calls async-signal-safe functions, so forking a threaded Node is fine.
int UsernsFd(uint32_t uid, uint32_t gid, std::string* err) {
  int ready[2], done[2];
  if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(done, O_CLOEXEC) != 0) { *err = Errno("pipe"); return -1; }
  pid_t pid = fork();
  if (pid < 0) { *err = Errno("fork"); return -1; }
  if (pid == 0) {
    // Its copy of the write end would keep its own read from ever seeing the end.
    close(done[1]);
    close(ready[0]);
    char c = unshare(CLONE_NEWUSER) == 0 ? 1 : 0;
    if (write(ready[1], &c, 1) != 1) _exit(1);
    if (read(done[0], &c, 1) < 0) _exit(1);
    _exit(0);
  }
  close(ready[1]);
  close(done[0]);
  char c = 0;
  int fd = -1;
  if (read(ready[0], &c, 1) != 1 || c != 1) {
    *err = "unshare(CLONE_NEWUSER) failed in the helper child";
  } else {
    std::string p = "/proc/" + std::to_string(pid);
    if (!WriteFile(p + "/uid_map", "0 " + std::to_string(uid) + " 1\n") || !WriteFile(p + "/setgroups", "deny\n")
        || !WriteFile(p + "/gid_map", "0 " + std::to_string(gid) + " 1\n")) {
      *err = Errno("writing the id maps");
    } else if ((fd = open((p + "/ns/user").c_str(), O_RDONLY | O_CLOEXEC)) < 0) {
      *err = Errno("opening the user namespace");
    }
  }
  close(done[1]);
  close(ready[0]);
  waitpid(pid, nullptr, 0);
  return fd;
}

// idmapMount(source, target, uid, gid): source bound read-only, nosuid, nodev at target, owners shifted.
Napi::Value IdmapMount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsString() || !info[2].IsNumber() || !info[3].IsNumber()) {
    Napi::TypeError::New(env, "idmapMount(source, target, uid, gid)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string src = info[0].As<Napi::String>().Utf8Value();
  std::string dst = info[1].As<Napi::String>().Utf8Value();
  uint32_t uid = info[2].As<Napi::Number>().Uint32Value();
  uint32_t gid = info[3].As<Napi::Number>().Uint32Value();
  std::string err;
  int tree = static_cast<int>(syscall(SYS_open_tree, AT_FDCWD, src.c_str(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC));
  if (tree < 0) err = Errno("open_tree");
  int ns = tree < 0 ? -1 : UsernsFd(uid, gid, &err);
  if (ns >= 0) {
    struct mount_attr attr = {};
    attr.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    attr.userns_fd = static_cast<uint64_t>(ns);
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) != 0) err = Errno("mount_setattr");
    else if (syscall(SYS_move_mount, tree, "", AT_FDCWD, dst.c_str(), MOVE_MOUNT_F_EMPTY_PATH) != 0) err = Errno("move_mount");
    close(ns);
  }
  if (tree >= 0) close(tree);
  if (!err.empty()) Napi::Error::New(env, "idmapped mount of " + src + " at " + dst + ": " + err).ThrowAsJavaScriptException();
  return env.Undefined();
}

}  // namespace

void InitIdmap(Napi::Env env, Napi::Object exports) {
  exports.Set("idmapMount", Napi::Function::New(env, IdmapMount));
}

}  // namespace lodger
