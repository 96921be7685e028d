package credentialbroker_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// body returns the lines of the function opened by header, up to its closing brace or stop.
func body(t *testing.T, text, header, stop string) []string {
	t.Helper()
	start := strings.Index(text, header)
	if start < 0 {
		t.Fatalf("%q not found", header)
	}
	var lines []string
	for _, line := range strings.Split(text[start+len(header):], "\n") {
		if line == "}" || strings.TrimSpace(line) == stop {
			break
		}
		if strings.TrimSpace(line) != "" {
			lines = append(lines, line)
		}
	}
	return lines
}

func TestReadmeWorkerIsTheExample(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)```go\n(.*?)```").FindSubmatch(readme)
	if block == nil {
		t.Fatal("README.md has no go block")
	}

	shown := body(t, string(block[1]), "func main() {\n", "")
	tested := body(t, string(example), "func Example_worker() {\n", "// Output: 200 OK")

	if strings.Join(shown, "\n") != strings.Join(tested, "\n") {
		t.Fatalf("README.md's main differs from Example_worker:\n%s\n---\n%s",
			strings.Join(shown, "\n"), strings.Join(tested, "\n"))
	}
	if len(strings.Split(strings.TrimSpace(string(block[1])), "\n")) >= 30 || len(shown) >= 20 {
		t.Fatalf("the README worker is no longer short")
	}
}
