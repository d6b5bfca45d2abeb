# Runs under the Debian interpreter being packaged (never the host's):
#   probe.py REPORT.json print
#   probe.py REPORT.json flask APP.py PORT
# "print" runs `print(1+1)`; "flask" runs APP.py as __main__ (a Flask app
# that calls app.run(port=PORT)) until SIGINT. At exit it writes REPORT.json:
# every module's file and every file opened, one per line (json is not in
# python3-minimal), so make-python-image keeps
# exactly what this run needed. Modules in BLOCKED are made unimportable, as
# they will be in the image, so the run takes the fallback paths the image
# will take (hashlib's built-in digests, werkzeug without ssl).
import sys

BLOCKED = {"ssl", "_ssl", "_hashlib"}


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED:
            raise ModuleNotFoundError(f"{name} is left out of the image", name=name)
        return None


sys.meta_path.insert(0, Blocker())
opened = set()


def audit(event, args):
    if event == "open" and isinstance(args[0], str):
        opened.add(args[0])


sys.addaudithook(audit)


def report(path):
    files = set()
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if isinstance(f, str):
            files.add(f)
    with open(path, "w") as out:
        out.writelines(f"{f}\n" for f in sorted(files | opened))


def main():
    out, mode = sys.argv[1], sys.argv[2]
    try:
        if mode == "print":
            print(1 + 1)
        elif mode == "flask":
            import runpy

            app, port = sys.argv[3], sys.argv[4]
            sys.argv = [app, port]
            try:
                runpy.run_path(app, run_name="__main__")
            except KeyboardInterrupt:
                pass
        else:
            raise SystemExit(f"probe: unknown mode {mode}")
    finally:
        report(out)


main()
