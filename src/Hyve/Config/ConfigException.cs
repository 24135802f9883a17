// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Config;

/// <summary>
/// A host-side configuration mistake (bad option, bad key, bad value, missing file). Its message is one line
/// that names the problem; the caller prints it and exits with status 4, as bhyve(8) does.
/// </summary>
public sealed class ConfigException : Exception
{
    /// <summary>Creates the exception with its one-line message.</summary>
    public ConfigException(string message) : base(message) { }
}
