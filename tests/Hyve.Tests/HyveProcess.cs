// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using System.Text;

namespace Hyve.Tests;

/// <summary>Runs the published ./hyve and ./hyvectl launchers as a user would, each VM with its own run directory.</summary>
public sealed class HyveProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();

    /// <summary>The repository root (where Hyve.slnx is).</summary>
    public static string RepoRoot { get; } = FindRoot();

    /// <summary>A fresh control-socket directory for this VM.</summary>
    public string RunDir { get; }

    private HyveProcess(string program, IEnumerable<string> args, string runDir)
    {
        RunDir = runDir;
        var psi = new ProcessStartInfo(Path.Combine(RepoRoot, program))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["HYVE_RUN_DIR"] = runDir;
        _process = new Process { StartInfo = psi };
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_stdout) _stdout.Append(e.Data).Append('\n'); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_stderr) _stderr.Append(e.Data).Append('\n'); };
        _process.Start();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    /// <summary>Starts ./hyve with <paramref name="args"/>.</summary>
    /// <remarks>Guest tests choose the CPU engine with <see cref="Backends.Args"/> (one theory row per engine); without an
    /// accel= argument hyve runs on KVM (accel=kvm), for the tests that are KVM-only.</remarks>
    public static HyveProcess Start(params string[] args) => new("hyve", WithAccel(args), NewRunDir());

    private static string[] WithAccel(string[] args)
    {
        foreach (var a in args)
            if (a.StartsWith("accel=", StringComparison.Ordinal)) return args;
        return ["-o", "accel=kvm", .. args];
    }

    /// <summary>Starts ./hyve inside network namespace <paramref name="netns"/> (through <c>ip netns exec</c>; root only).</summary>
    public static HyveProcess StartInNetns(string netns, params string[] args) =>
        new("/usr/sbin/ip", ["netns", "exec", netns, Path.Combine(RepoRoot, "hyve"), .. WithAccel(args)], NewRunDir());

    /// <summary>Runs ./hyve to completion and returns it.</summary>
    public static HyveProcess Run(params string[] args)
    {
        var p = Start(args);
        p.WaitForExit();
        return p;
    }

    /// <summary>Runs ./hyvectl against this VM's run directory; returns (exit status, stdout, stderr).</summary>
    public (int Status, string Out, string Err) Ctl(params string[] args)
    {
        using var p = new HyveProcess("hyvectl", args, RunDir);
        p.WaitForExit();
        return (p.ExitCode, p.Stdout, p.Stderr);
    }

    /// <summary>Runs ./hyvectl with its own empty run directory.</summary>
    public static (int Status, string Out, string Err) CtlAlone(params string[] args)
    {
        using var p = new HyveProcess("hyvectl", args, NewRunDir());
        p.WaitForExit();
        return (p.ExitCode, p.Stdout, p.Stderr);
    }

    /// <summary>Waits for exit (failing the test after <paramref name="seconds"/>).</summary>
    public void WaitForExit(int seconds = 120)
    {
        if (!_process.WaitForExit(seconds * 1000))
        {
            _process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{_process.StartInfo.FileName} did not exit in {seconds} s; stdout: {Stdout} stderr: {Stderr}");
        }
        _process.WaitForExit();
    }

    /// <summary>Waits until stdout contains <paramref name="text"/>.</summary>
    public void WaitForOutput(string text, int seconds = 60)
    {
        var sw = Stopwatch.StartNew();
        while (!Stdout.Contains(text, StringComparison.Ordinal))
        {
            if (_process.HasExited && !Stdout.Contains(text, StringComparison.Ordinal))
            {
                Thread.Sleep(100);
                if (Stdout.Contains(text, StringComparison.Ordinal)) return;
                throw new InvalidOperationException($"exited with {_process.ExitCode} before printing '{text}'; stdout: {Stdout} stderr: {Stderr}");
            }
            if (sw.Elapsed.TotalSeconds > seconds) throw new TimeoutException($"no '{text}' in {seconds} s; stdout: {Stdout} stderr: {Stderr}");
            Thread.Sleep(20);
        }
    }

    /// <summary>Waits until the control socket of VM <paramref name="name"/> exists.</summary>
    public void WaitForSocket(string name, int seconds = 60)
    {
        var sw = Stopwatch.StartNew();
        while (!File.Exists(Path.Combine(RunDir, name)))
        {
            if (_process.HasExited) throw new InvalidOperationException($"hyve exited with {_process.ExitCode}: {Stderr}");
            if (sw.Elapsed.TotalSeconds > seconds) throw new TimeoutException("no control socket");
            Thread.Sleep(20);
        }
    }

    /// <summary>Sends a signal to hyve.</summary>
    public void Signal(int sig) => Process.Start("kill", $"-{sig} {_process.Id}")!.WaitForExit();

    /// <summary>Exit status.</summary>
    public int ExitCode => _process.ExitCode;

    /// <summary>True once exited.</summary>
    public bool HasExited => _process.HasExited;

    /// <summary>Standard output so far.</summary>
    public string Stdout { get { lock (_stdout) return _stdout.ToString(); } }

    /// <summary>Standard error so far.</summary>
    public string Stderr { get { lock (_stderr) return _stderr.ToString(); } }

    /// <summary>Standard input.</summary>
    public StreamWriter Stdin => _process.StandardInput;

    private static string NewRunDir()
    {
        string d = Path.Combine(Path.GetTempPath(), "hyve-test-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(d);
        return d;
    }

    private static string FindRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "Hyve.slnx"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repository root not found");
    }

    /// <summary>Kills hyve if it still runs.</summary>
    public void Dispose()
    {
        try { if (!_process.HasExited) _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        _process.Dispose();
    }
}
