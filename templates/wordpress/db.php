<?php
/*
 * wp-content/db.php: WordPress's database drop-in, placed by Lifeboat
 * (templates/wordpress/db.php) in every release. It loads PG4WP, the driver that lets
 * WordPress speak to PostgreSQL, from wp-content/pg4wp (where PG4WP's loader looks).
 *
 * WordPress 6.1's wpdb connects with mysqli only when function_exists('mysqli_connect');
 * PG4WP rewrites wpdb's code ("mysqli_" -> "wpsqli_") but defines no wpsqli_connect, so
 * wpdb would fall back to ext/mysql and die (FIELD-NOTES, "WordPress on PostgreSQL").
 * An empty one, defined first, keeps wpdb on PG4WP's functions. It is never called.
 */
if (!function_exists('wpsqli_connect')) {
    function wpsqli_connect() {}
}
// PG4WP would write its error log into the release (read-only to php-fpm): PHP's log.
if (!defined('PG4WP_LOG_ERRORS')) {
    define('PG4WP_LOG_ERRORS', false);
}
require_once __DIR__ . '/pg4wp/db.php';
