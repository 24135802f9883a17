// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using Xunit;

namespace Hyve.Tests.Acpi;

/// <summary>A fact that needs ACPICA's iasl (Debian acpica-tools): skipped with the reason when it is missing.</summary>
public sealed class IaslFactAttribute : FactAttribute
{
    public IaslFactAttribute()
    {
        if (Iasl.Path is null) Skip = "iasl not found (install Debian's acpica-tools)";
    }
}

/// <summary>Runs iasl -d on table bytes and returns the disassembly.</summary>
public static class Iasl
{
    public static readonly string? Path = Find();

    private static string? Find()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Append("/usr/bin").Append("/usr/sbin"))
        {
            var p = System.IO.Path.Combine(dir, "iasl");
            if (File.Exists(p)) return p;
        }
        return null;
    }

    /// <summary>The result of one disassembly: iasl's exit code, its console output and the .dsl text.</summary>
    public sealed record Result(int ExitCode, string Output, string Dsl);

    public static Result Disassemble(byte[] table, string name)
    {
        var dir = Directory.CreateTempSubdirectory("hyve-iasl-");
        try
        {
            var file = System.IO.Path.Combine(dir.FullName, name + ".dat");
            File.WriteAllBytes(file, table);
            var psi = new ProcessStartInfo(Path!) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir.FullName };
            psi.ArgumentList.Add("-d");
            psi.ArgumentList.Add(file);
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(30_000)) { p.Kill(); throw new TimeoutException("iasl hung"); }
            var dsl = System.IO.Path.ChangeExtension(file, ".dsl");
            return new Result(p.ExitCode, stdout.Result + stderr.Result, File.Exists(dsl) ? File.ReadAllText(dsl) : "");
        }
        finally { dir.Delete(true); }
    }
}
