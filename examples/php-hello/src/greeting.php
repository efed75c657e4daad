<?php
declare(strict_types=1);

function greeting(string $language): string
{
    return "Hello from $language on Skiff!";
}
