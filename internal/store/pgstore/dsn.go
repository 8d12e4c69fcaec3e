package pgstore

import (
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/fulfilld/fulfilld/config"
)

// The database password is a secret like the API key: no error, log line
// or output of fulfilld holds it. pgx keeps it out of its own messages;
// these make sure of it whatever an error quotes.

// Redact returns dsn with its password replaced by xxxxx, in either form
// libpq accepts, for a log line or an error: config.RedactDSN, which the
// configuration's own log lines use too.
func Redact(dsn string) string { return config.RedactDSN(dsn) }

// secretsOf is every password dsn or the environment may carry, for scrub
// when the DSN could not even be parsed.
func secretsOf(dsn string) []string {
	out := config.DSNPasswords(dsn)
	if p := os.Getenv("PGPASSWORD"); p != "" {
		out = append(out, p)
	}
	return out
}

// destination names a database for messages: where and as whom, never
// with what password.
type destination struct {
	host     string
	port     uint16
	database string
	user     string
	password string
}

func destinationOf(c *pgx.ConnConfig) destination {
	return destination{host: c.Host, port: c.Port, database: c.Database, user: c.User, password: c.Password}
}

func (d destination) String() string {
	host := d.host
	if strings.HasPrefix(host, "/") {
		host = "socket " + host
	}
	return fmt.Sprintf("postgres %s port %s, database %q as user %q", host, strconv.Itoa(int(d.port)), d.database, d.user)
}

// wrap says what was being done, where, with the password scrubbed from
// err's text.
func (d destination) wrap(doing string, err error) error {
	return fmt.Errorf("%s %s: %w", doing, d, scrub(err, d.password))
}

// scrub returns err with every secret replaced in its text. It still
// unwraps to err (errors.Is, errors.As keep working) unless err's own text
// holds a secret.
func scrub(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg, leaked := err.Error(), false
	for _, s := range secrets {
		// A password of a character or two would blank out the message
		// and hide nothing: any text holds it.
		if len(s) >= 3 && strings.Contains(msg, s) {
			msg, leaked = strings.ReplaceAll(msg, s, "xxxxx"), true
		}
	}
	if !leaked {
		return err
	}
	return &scrubbed{msg: msg}
}

// scrubbed is an error whose text had a secret in it: it keeps the text
// without it, and no way back to the original.
type scrubbed struct{ msg string }

func (e *scrubbed) Error() string { return e.msg }

// WithDatabase returns dsn pointed at another database of the same server
// (tests and the benchmark make fresh ones).
func WithDatabase(dsn, database string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if u, err := url.Parse(dsn); err == nil {
			u.Path, u.RawPath = "/"+database, ""
			q := u.Query()
			if q.Has("dbname") {
				q.Set("dbname", database)
				u.RawQuery = q.Encode()
			}
			return u.String()
		}
	}
	// key=value: the last setting of a key wins.
	return dsn + " dbname=" + database
}
