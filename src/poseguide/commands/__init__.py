"""The commands of ``poseguide <command>``, one module each: a module owns its arguments
(``register``) and its handler, reads top to bottom, and calls the library; :data:`COMMANDS` is
the order ``poseguide --help`` lists them in."""

from poseguide.commands import (
    app,
    base,
    config,
    data,
    evaluate,
    explain,
    generate,
    pose,
    reproduce,
    train,
)

COMMANDS = (config, pose, data, train, base, explain, generate, evaluate, reproduce, app)
