<?php
// Lifeboat's failover write probe: run on a web droplet during a failover drill, it
// writes through HAProxy's primary port exactly as WordPress does (the credentials of
// /etc/lifeboat/wordpress-db.php, the WordPress role), one row every INTERVAL seconds,
// each with a key of its own, and records every attempt with its times:
//   {"key": ..., "sent": epoch, "done": epoch, "ok": bool, "error": "..."}
// A write counts as acknowledged only when its COMMIT returned. Each attempt has a
// deadline (a dead primary's packets are dropped, and libpq would wait on TCP for
// minutes): past it the connection is dropped and the attempt recorded as failed.
//
//   php write-probe.php RUN OUT STOPFILE [INTERVAL] [DEADLINE] [MAX_SECONDS] [DB_CONFIG]
// Runs until STOPFILE exists or MAX_SECONDS passed. DB_CONFIG: another file returning the
// same array as /etc/lifeboat/wordpress-db.php (the tests use one). Table lifeboat_failover_probe
// (key text primary key, run text, at timestamptz) must exist and be writable.

[$_, $run, $out, $stopfile] = array_slice($argv, 0, 4) + [null, null, null, null];
$interval = (float)($argv[4] ?? 0.05);
$deadline = (float)($argv[5] ?? 1.0);
$max = (float)($argv[6] ?? 600);
$config = $argv[7] ?? '/etc/lifeboat/wordpress-db.php';
if (!$run || !$out || !$stopfile) {
    fwrite(STDERR, "usage: write-probe.php RUN OUT STOPFILE [INTERVAL] [DEADLINE] [MAX]\n");
    exit(2);
}
$db = require $config;
$dsn = sprintf(
    "host=%s port=%d dbname=%s user=%s password=%s connect_timeout=1 application_name=lifeboat-failover-probe",
    $db['host'], $db['port'], $db['dbname'], $db['user'],
    "'" . addcslashes($db['password'], "'\\") . "'"
);
$log = fopen($out, 'w');
$conn = null;
$started = microtime(true);
for ($i = 0; !file_exists($stopfile) && microtime(true) - $started < $max; $i++) {
    $sent = microtime(true);
    $key = "$run-$i";
    $ok = false;
    $error = '';
    if ($conn === null) {
        $conn = @pg_connect($dsn, PGSQL_CONNECT_FORCE_NEW);
        if ($conn === false) {
            $conn = null;
            $error = 'connect failed';
        }
    }
    if ($conn !== null) {
        if (@pg_send_query_params(
            $conn,
            'INSERT INTO lifeboat_failover_probe (key, run, at) VALUES ($1, $2, now())',
            [$key, $run]
        )) {
            while (pg_connection_busy($conn) && microtime(true) - $sent < $deadline) {
                usleep(2000);
            }
            if (pg_connection_busy($conn)) {
                $error = 'no answer within the deadline';
            } else {
                $result = pg_get_result($conn);
                $ok = $result !== false && pg_result_status($result) === PGSQL_COMMAND_OK;
                if (!$ok) {
                    $error = trim((string)($result ? pg_result_error($result) : pg_last_error($conn)));
                }
                while (pg_get_result($conn) !== false) {
                }
            }
        } else {
            $error = 'send failed';
        }
        if (!$ok) {
            @pg_close($conn);  // whatever went wrong, start the next attempt afresh
            $conn = null;
        }
    }
    $done = microtime(true);
    fwrite($log, json_encode(['key' => $key, 'sent' => $sent, 'done' => $done, 'ok' => $ok, 'error' => substr($error, 0, 200)]) . "\n");
    fflush($log);
    $rest = $interval - ($done - $sent);
    if ($rest > 0) {
        usleep((int)($rest * 1e6));
    }
}
fclose($log);
