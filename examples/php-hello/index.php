<?php
// The front controller: Skiff sends every request that is not an existing file here, like
// a rewrite rule to index.php would on Apache or nginx.
declare(strict_types=1);

require __DIR__ . '/src/greeting.php';

$method = $_SERVER['REQUEST_METHOD'];
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH) ?: '/';

function text(int $status, string $body): void
{
    http_response_code($status);
    header('Content-Type: text/plain; charset=utf-8');
    echo $body;
}

if ($method === 'GET' && $path === '/') {
    text(200, greeting('PHP') . "\n");
} elseif ($method === 'GET' && preg_match('#^/env/([^/]+)$#', $path, $m)) {
    $value = getenv($m[1]);
    $value === false ? text(404, "not set\n") : text(200, $value);
} elseif ($method === 'POST' && $path === '/echo') {
    // The type goes back exactly as sent: PHP would otherwise add "; charset=UTF-8" to text/*.
    ini_set('default_charset', '');
    header('Content-Type: ' . ($_SERVER['CONTENT_TYPE'] ?? 'application/octet-stream'));
    echo file_get_contents('php://input');
} elseif ($method === 'GET' && $path === '/json') {
    header('Content-Type: application/json');
    echo json_encode([
        'app' => getenv('SKIFF_APP') ?: null,
        'dyno' => getenv('DYNO') ?: null,
        'php' => PHP_VERSION,
        'method' => $method,
        'path' => $path,
        'query' => $_GET,
        'agent' => $_SERVER['HTTP_USER_AGENT'] ?? null,
        'release' => $_ENV['SKIFF_RELEASE_VERSION'] ?? null,
    ]);
} else {
    text(404, "no route for $method $path\n");
}
