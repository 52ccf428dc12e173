<?php
/*
 * Lifeboat's web health endpoint (templates/wordpress/lifeboat-health.php): writes a row
 * through HAProxy's primary port into the WordPress database, reads it back, and answers
 * JSON. HTTP 200 only when both worked, else 503: the load balancer's health check and
 * the rollout's gate. Short timeouts so a failover shows within a check or two.
 * A persistent connection per php-fpm worker, as WordPress's own (PG4WP's connect is made
 * pg_pconnect at release assembly): no connection set up per request, so a flood costs
 * the database no new sessions. A link a failover broke (HAProxy shuts the sessions of a
 * backend it marks down) is reset on reuse: pgsql.auto_reset_persistent (php-lifeboat.ini).
 */
ini_set('display_errors', '0');
header('Content-Type: application/json');
header('Cache-Control: no-store');

const DB_SETTINGS = '/etc/lifeboat/wordpress-db.php';
const CONNECT_TIMEOUT_S = 2;      // libpq's minimum
const STATEMENT_TIMEOUT_MS = 1500;

$started = hrtime(true);
$host = gethostname();
$result = ['ok' => false, 'host' => $host, 'write' => 'not tried', 'read' => 'not tried'];

function pg_literal(string $value): string
{
    return "'" . str_replace(['\\', "'"], ['\\\\', "\\'"], $value) . "'";
}

function finish(array $result, int $started): void
{
    $result['latency_ms'] = round((hrtime(true) - $started) / 1e6, 1);
    http_response_code($result['ok'] ? 200 : 503);
    echo json_encode($result), "\n";
    exit;
}

function failure(string $what): string
{
    // The first line of the driver's message only; it never contains the password. It
    // goes to php-fpm's log, and into the answer only for the load balancer's checks and
    // the droplet itself: a public request (it carries X-Forwarded-For) learns nothing of
    // the database.
    $err = error_get_last();
    $msg = $err ? strtok($err['message'], "\n") : 'unknown error';
    $detail = $what . ': ' . preg_replace('/^pg_\w+\(\): /', '', $msg);
    error_log('lifeboat-health: ' . $detail);
    return empty($_SERVER['HTTP_X_FORWARDED_FOR']) ? $detail : $what . ': database unavailable';
}

if (!is_readable(DB_SETTINGS)) {
    error_log('lifeboat-health: ' . DB_SETTINGS . ' not readable');
    $result['error'] = 'database settings not readable';
    finish($result, $started);
}
$db = require DB_SETTINGS;
$dsn = implode(' ', [
    'host=' . pg_literal($db['host']),
    'port=' . pg_literal((string) $db['port']),
    'dbname=' . pg_literal($db['dbname']),
    'user=' . pg_literal($db['user']),
    'password=' . pg_literal($db['password']),
    'connect_timeout=' . CONNECT_TIMEOUT_S,
    'application_name=lifeboat-health',
    'options=' . pg_literal('-c statement_timeout=' . STATEMENT_TIMEOUT_MS),
]);
$conn = @pg_pconnect($dsn);
if ($conn === false) {
    $result['error'] = failure('connect');
    finish($result, $started);
}

$token = bin2hex(random_bytes(8));
// One transaction: the row stays locked from the write to the commit, so a concurrent
// request on this droplet (another php-fpm worker) cannot overwrite it before it is read
// back (outside one, a flood made checks fail with "row not read back"). The COMMIT is
// what waits for the synchronous standby: it must succeed too.
function rollback($conn): void
{
    @pg_query($conn, 'ROLLBACK');  // a persistent link must not stay in a failed transaction
}
if (@pg_query($conn, 'BEGIN') === false) {
    $result['write'] = failure('failed');
    finish($result, $started);
}
$write = @pg_query_params(
    $conn,
    'INSERT INTO lifeboat_health (host, token, written_at) VALUES ($1, $2, now()) '
    . 'ON CONFLICT (host) DO UPDATE SET token = EXCLUDED.token, written_at = EXCLUDED.written_at',
    [$host, $token]
);
if ($write === false) {
    $result['write'] = failure('failed');
    rollback($conn);
    finish($result, $started);
}
$read = @pg_query_params($conn, 'SELECT token FROM lifeboat_health WHERE host = $1', [$host]);
$row = $read === false ? false : pg_fetch_row($read);
if ($row === false || $row[0] !== $token) {
    $result['read'] = $read === false ? failure('failed') : 'row not read back';
    rollback($conn);
    finish($result, $started);
}
if (@pg_query($conn, 'COMMIT') === false) {
    $result['write'] = failure('commit failed');
    rollback($conn);
    finish($result, $started);
}
$result['write'] = 'ok';
$result['read'] = 'ok';
$result['ok'] = true;
finish($result, $started);
