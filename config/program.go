package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
)

// checkProgram refuses an argv whose program cannot be started: a path that
// does not exist or is not an executable file, or a bare name that PATH does
// not resolve (the same search exec.LookPath, and so the action runner, does).
func checkProgram(path string, argv []string) error {
	if len(argv) == 0 {
		return nil
	}
	prog := argv[0]
	if !strings.Contains(prog, "/") {
		if _, err := exec.LookPath(prog); errors.Is(err, exec.ErrDot) {
			return &Error{Key: path, Msg: fmt.Sprintf("program %q is found only through a relative directory in PATH; give its absolute path", prog)}
		} else if err != nil {
			return &Error{Key: path, Msg: fmt.Sprintf("program %q is not found in PATH (%s); give its absolute path, or install it", prog, os.Getenv("PATH"))}
		}
		return nil
	}
	info, err := os.Stat(prog)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &Error{Key: path, Msg: fmt.Sprintf("program %s does not exist; give the path of your action's executable", prog)}
	case err != nil:
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return &Error{Key: path, Msg: fmt.Sprintf("cannot use program %s: %v", prog, err)}
	case info.IsDir():
		return &Error{Key: path, Msg: fmt.Sprintf("program %s is a directory; give the path of your action's executable", prog)}
	case info.Mode().Perm()&0o111 == 0:
		return &Error{Key: path, Msg: fmt.Sprintf("program %s is not executable (mode %04o); chmod +x it, or run it through an interpreter, e.g. [\"/bin/sh\", %q]", prog, info.Mode().Perm(), prog)}
	}
	return nil
}
